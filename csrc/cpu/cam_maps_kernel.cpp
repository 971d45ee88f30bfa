// Localization-map building blocks, CPU: flip-merge (+ accumulate) and per-plane max-normalisation.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>

#include "../cam_maps.h"
#include "../host_prep.h"

namespace rib_ext {
namespace cpu {

namespace {

// out[p, h, w] (+)= relu(a[p, h, w]) + relu(b[p, h, W-1-w]); out has a's opmath dtype.
void flip_merge_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  const int64_t W = a.size(-1);
  const int64_t rows = W > 0 ? a.numel() / W : 0;
  if (rows == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "cam_flip_merge_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* ap = a.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    acc_t* op = out.mutable_data_ptr<acc_t>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / W), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* ar = ap + r * W;
        const scalar_t* br = bp + r * W;
        acc_t* orow = op + r * W;
        for (int64_t w = 0; w < W; ++w) {
          const acc_t va = static_cast<acc_t>(ar[w]);
          const acc_t vb = static_cast<acc_t>(br[W - 1 - w]);
          const acc_t v = (va > 0 ? va : acc_t(0)) + (vb > 0 ? vb : acc_t(0));
          orow[w] = accumulate ? orow[w] + v : v;
        }
      }
    });
  });
}

}  // namespace

at::Tensor cam_flip_merge_cpu(const at::Tensor& cam, const at::Tensor& cam_flip) {
  return cam_flip_merge_host(cam, cam_flip, flip_merge_into);
}

void cam_flip_accumulate_cpu(at::Tensor& acc, const at::Tensor& cam, const at::Tensor& cam_flip) {
  cam_flip_accumulate_host(acc, cam, cam_flip, flip_merge_into);
}

at::Tensor cam_max_normalize_cpu(const at::Tensor& maps, double eps) {
  const auto a = prepare_cam_max_normalize(maps);
  const int64_t planes = a.maps.count;
  const int64_t hw = a.maps.hw;
  if (a.out.numel() == 0) return a.out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, maps.scalar_type(), "cam_max_normalize_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = a.maps.x.const_data_ptr<scalar_t>();
    scalar_t* op = a.out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes, std::max<int64_t>(1, 16384 / hw), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const scalar_t* xs = xp + p * hw;
        acc_t m = -std::numeric_limits<acc_t>::infinity();
        for (int64_t u = 0; u < hw; ++u) m = std::max(m, static_cast<acc_t>(xs[u]));
        const acc_t d = m + static_cast<acc_t>(eps);
        for (int64_t u = 0; u < hw; ++u) op[p * hw + u] = static_cast<scalar_t>(static_cast<acc_t>(xs[u]) / d);
      }
    });
  });
  return a.out;
}

TORCH_LIBRARY_IMPL(rib_ext, CPU, m) {
  m.impl("cam_flip_merge", &cam_flip_merge_cpu);
  m.impl("cam_flip_accumulate_", &cam_flip_accumulate_cpu);
  m.impl("cam_max_normalize", &cam_max_normalize_cpu);
}

}  // namespace cpu
}  // namespace rib_ext
