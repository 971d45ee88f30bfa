// Localization-map building blocks, CUDA: flip-merge (+ accumulate) and per-plane max-normalisation.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"
#include "block_reduce.cuh"

namespace rib_ext {
namespace cuda {

namespace {

constexpr int kThreads = 256;

template <typename scalar_t, typename acc_t>
__global__ void flip_merge_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                  int64_t W, int64_t total, bool accumulate,
                                  acc_t* __restrict__ out) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t w = e % W;
    const int64_t mirrored = e - w + (W - 1 - w);
    const acc_t va = static_cast<acc_t>(a[e]);
    const acc_t vb = static_cast<acc_t>(b[mirrored]);
    const acc_t v = (va > acc_t(0) ? va : acc_t(0)) + (vb > acc_t(0) ? vb : acc_t(0));
    out[e] = accumulate ? out[e] + v : v;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void max_normalize_kernel(const scalar_t* __restrict__ x, int64_t hw, acc_t eps,
                                     scalar_t* __restrict__ out) {
  __shared__ acc_t shared[kWarp];
  const scalar_t* xs = x + blockIdx.x * hw;
  scalar_t* os = out + blockIdx.x * hw;
  acc_t m = -INFINITY;
  for (int64_t u = threadIdx.x; u < hw; u += blockDim.x) {
    const acc_t v = static_cast<acc_t>(xs[u]);
    m = v > m ? v : m;
  }
  const acc_t d = block_reduce<acc_t, true>(m, shared) + eps;
  for (int64_t u = threadIdx.x; u < hw; u += blockDim.x) {
    os[u] = static_cast<scalar_t>(static_cast<acc_t>(xs[u]) / d);
  }
}

void check_flip_pair(const at::Tensor& cam, const at::Tensor& cam_flip, const char* op) {
  TORCH_CHECK(cam.dim() >= 2, op, ": cam must be [..., H, W], got ", cam.sizes());
  check_same_shape(cam, cam_flip, "cam", "cam_flip", op);
}

void flip_merge_into(at::Tensor& out, const at::Tensor& cam, const at::Tensor& cam_flip,
                     bool accumulate) {
  const at::cuda::OptionalCUDAGuard guard(cam.device());
  const auto a = cam.contiguous();
  const auto b = cam_flip.contiguous();
  const int64_t total = a.numel();
  if (total == 0) return;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65535 * 8);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cam.scalar_type(), "cam_flip_merge_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    flip_merge_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
        a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), cam.size(-1), total, accumulate,
        out.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

at::Tensor cam_flip_merge_cuda(const at::Tensor& cam, const at::Tensor& cam_flip) {
  check_flip_pair(cam, cam_flip, "cam_flip_merge");
  auto out = at::empty(cam.sizes(), cam.options().dtype(at::toOpMathType(cam.scalar_type()))
                                        .memory_format(at::MemoryFormat::Contiguous));
  flip_merge_into(out, cam, cam_flip, /*accumulate=*/false);
  return out;
}

void cam_flip_accumulate_cuda(at::Tensor& acc, const at::Tensor& cam, const at::Tensor& cam_flip) {
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

at::Tensor cam_max_normalize_cuda(const at::Tensor& maps, double eps) {
  TORCH_CHECK(maps.dim() >= 2, "cam_max_normalize: maps must be [..., H, W], got ", maps.sizes());
  TORCH_CHECK(at::isFloatingType(maps.scalar_type()), "cam_max_normalize: maps must be floating point");
  const at::cuda::OptionalCUDAGuard guard(maps.device());
  const auto x = maps.contiguous();
  auto out = at::empty(x.sizes(), x.options());
  const int64_t hw = maps.size(-1) * maps.size(-2);
  const int64_t planes = hw > 0 ? maps.numel() / hw : 0;
  if (planes == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cam_max_normalize_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    max_normalize_kernel<scalar_t, acc_t><<<planes, kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), hw, static_cast<acc_t>(eps), out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

TORCH_LIBRARY_IMPL(rib_ext, CUDA, m) {
  m.impl("cam_flip_merge", &cam_flip_merge_cuda);
  m.impl("cam_flip_accumulate_", &cam_flip_accumulate_cuda);
  m.impl("cam_max_normalize", &cam_max_normalize_cuda);
}

}  // namespace cuda
}  // namespace rib_ext
