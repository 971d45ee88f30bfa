// Localization-map building blocks, CPU: flip-merge (+ accumulate) and per-plane max-normalisation.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>

#include "../checks.h"

namespace rib_ext {
namespace cpu {

namespace {

void check_flip_pair(const at::Tensor& cam, const at::Tensor& cam_flip, const char* op) {
  TORCH_CHECK(cam.dim() >= 2, op, ": cam must be [..., H, W], got ", cam.sizes());
  check_same_shape(cam, cam_flip, "cam", "cam_flip", op);
}

// out[p, h, w] (+)= relu(a[p, h, w]) + relu(b[p, h, W-1-w]); out has cam's opmath dtype.
void flip_merge_into(at::Tensor& out, const at::Tensor& cam, const at::Tensor& cam_flip,
                     bool accumulate) {
  const auto a = cam.contiguous();
  const auto b = cam_flip.contiguous();
  const int64_t W = cam.size(-1);
  const int64_t rows = W > 0 ? cam.numel() / W : 0;
  if (rows == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cam.scalar_type(), "cam_flip_merge_cpu", [&] {
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
  check_flip_pair(cam, cam_flip, "cam_flip_merge");
  auto out = at::empty(cam.sizes(), cam.options().dtype(at::toOpMathType(cam.scalar_type()))
                                        .memory_format(at::MemoryFormat::Contiguous));
  flip_merge_into(out, cam, cam_flip, /*accumulate=*/false);
  return out;
}

void cam_flip_accumulate_cpu(at::Tensor& acc, const at::Tensor& cam, const at::Tensor& cam_flip) {
  check_flip_pair(cam, cam_flip, "cam_flip_accumulate_");
  check_same_shape(acc, cam, "acc", "cam", "cam_flip_accumulate_");
  TORCH_CHECK(acc.scalar_type() == at::toOpMathType(cam.scalar_type()),
              "cam_flip_accumulate_: acc must be ", at::toOpMathType(cam.scalar_type()),
              " for a ", cam.scalar_type(), " cam, got ", acc.scalar_type());
  if (acc.is_contiguous()) {
    flip_merge_into(acc, cam, cam_flip, /*accumulate=*/true);
  } else {
    auto tmp = acc.contiguous();
    flip_merge_into(tmp, cam, cam_flip, /*accumulate=*/true);
    acc.copy_(tmp);
  }
}

at::Tensor cam_max_normalize_cpu(const at::Tensor& maps, double eps) {
  TORCH_CHECK(maps.dim() >= 2, "cam_max_normalize: maps must be [..., H, W], got ", maps.sizes());
  TORCH_CHECK(at::isFloatingType(maps.scalar_type()), "cam_max_normalize: maps must be floating point");
  const auto x = maps.contiguous();
  auto out = at::empty(x.sizes(), x.options());
  const int64_t hw = maps.size(-1) * maps.size(-2);
  const int64_t planes = hw > 0 ? maps.numel() / hw : 0;
  if (planes == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cam_max_normalize_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
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
  return out;
}

TORCH_LIBRARY_IMPL(rib_ext, CPU, m) {
  m.impl("cam_flip_merge", &cam_flip_merge_cpu);
  m.impl("cam_flip_accumulate_", &cam_flip_accumulate_cpu);
  m.impl("cam_max_normalize", &cam_max_normalize_cpu);
}

}  // namespace cpu
}  // namespace rib_ext
