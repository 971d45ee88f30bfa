// One SGD step of many weight slots, CPU (semantics: csrc/sgd_step.h).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../host_prep.h"
#include "../sgd_step.h"

namespace rib_ext {
namespace cpu {

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
        for (int64_t i = begin; i < end; ++i) {
          sgd::step<scalar_t>(p + row + i, b + row + i, g[row + i], lr[2 * s + (i >= split)],
                              fresh[s], wd, mom);
        }
      });
    }
  });
}

TORCH_LIBRARY_IMPL(rib_ext, CPU, m) {
  m.impl("sgd_step_", &sgd_step_cpu);
}

}  // namespace cpu
}  // namespace rib_ext
