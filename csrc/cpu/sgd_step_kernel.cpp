// One SGD step of many weight slots, CPU (semantics: csrc/sgd_step.h).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../host_prep.h"
#include "../sgd_step.h"

namespace rib_ext {
namespace cpu {

namespace {

// Elements [begin, end) of one slot's row. Built twice, for CPUs with FMA instructions and for
// the others, chosen when the library loads: std::fma is then one instruction, not a call into
// libm per element (about 3x the time). Both round exactly once, so both give the same bits.
template <typename T>
inline void step_range(T* p, T* buf, const T* g, const T* lr, bool first, int64_t split,
                       int64_t begin, int64_t end, T weight_decay, T momentum) {
  for (int64_t i = begin; i < end; ++i) {
    sgd::step<T>(p + i, buf + i, g[i], lr[i >= split], first, weight_decay, momentum);
  }
}

__attribute__((target_clones("fma", "default"))) void step_range_f32(
    float* p, float* buf, const float* g, const float* lr, bool first, int64_t split,
    int64_t begin, int64_t end, float weight_decay, float momentum) {
  step_range<float>(p, buf, g, lr, first, split, begin, end, weight_decay, momentum);
}

__attribute__((target_clones("fma", "default"))) void step_range_f64(
    double* p, double* buf, const double* g, const double* lr, bool first, int64_t split,
    int64_t begin, int64_t end, double weight_decay, double momentum) {
  step_range<double>(p, buf, g, lr, first, split, begin, end, weight_decay, momentum);
}

inline void step_range_any(float* p, float* buf, const float* g, const float* lr, bool first,
                           int64_t split, int64_t begin, int64_t end, float wd, float mom) {
  step_range_f32(p, buf, g, lr, first, split, begin, end, wd, mom);
}

inline void step_range_any(double* p, double* buf, const double* g, const double* lr, bool first,
                           int64_t split, int64_t begin, int64_t end, double wd, double mom) {
  step_range_f64(p, buf, g, lr, first, split, begin, end, wd, mom);
}

}  // namespace

void sgd_step_cpu(at::Tensor& params, at::Tensor& bufs, const at::Tensor& grads,
                  const at::Tensor& lrs, const at::Tensor& go, const at::Tensor& first,
                  int64_t split, double weight_decay, double momentum) {
  const auto a = prepare_sgd_step(params, bufs, grads, lrs, go, first, split);
  const int64_t slots = params.size(0), n = params.size(1);
  if (params.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES(params.scalar_type(), "sgd_step_cpu", [&] {
    scalar_t* p = params.mutable_data_ptr<scalar_t>();
    scalar_t* b = bufs.mutable_data_ptr<scalar_t>();
    const scalar_t* g = a.grads.const_data_ptr<scalar_t>();
    const scalar_t* lr = a.lrs.const_data_ptr<scalar_t>();
    const bool* step = a.go.const_data_ptr<bool>();
    const bool* fresh = a.first.const_data_ptr<bool>();
    const auto wd = static_cast<scalar_t>(weight_decay);
    const auto mom = static_cast<scalar_t>(momentum);
    for (int64_t s = 0; s < slots; ++s) {
      if (!step[s]) continue;
      const int64_t row = s * n;
      at::parallel_for(0, n, 32768, [&](int64_t begin, int64_t end) {
        step_range_any(p + row, b + row, g + row, lr + 2 * s, fresh[s], split, begin, end, wd, mom);
      });
    }
  });
}

TORCH_LIBRARY_IMPL(rib_ext, CPU, m) {
  m.impl("sgd_step_", &sgd_step_cpu);
}

}  // namespace cpu
}  // namespace rib_ext
