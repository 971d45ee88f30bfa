// Localization-map building blocks, CUDA: flip-merge (+ accumulate) and per-plane max-normalisation.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../host_prep.h"
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

void flip_merge_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  const int64_t total = a.numel();
  if (total == 0) return;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65535 * 8);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "cam_flip_merge_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    flip_merge_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
        a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), a.size(-1), total, accumulate,
        out.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

at::Tensor cam_flip_merge_cuda(const at::Tensor& cam, const at::Tensor& cam_flip) {
  const at::cuda::OptionalCUDAGuard guard(cam.device());
  return cam_flip_merge_host(cam, cam_flip, flip_merge_into);
}

void cam_flip_accumulate_cuda(at::Tensor& acc, const at::Tensor& cam, const at::Tensor& cam_flip) {
  const at::cuda::OptionalCUDAGuard guard(cam.device());
  cam_flip_accumulate_host(acc, cam, cam_flip, flip_merge_into);
}

at::Tensor cam_max_normalize_cuda(const at::Tensor& maps, double eps) {
  const at::cuda::OptionalCUDAGuard guard(maps.device());
  const auto a = prepare_cam_max_normalize(maps);
  if (a.out.numel() == 0) return a.out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, maps.scalar_type(), "cam_max_normalize_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    max_normalize_kernel<scalar_t, acc_t><<<a.maps.count, kThreads, 0, stream>>>(
        a.maps.x.const_data_ptr<scalar_t>(), a.maps.hw, static_cast<acc_t>(eps),
        a.out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return a.out;
}

TORCH_LIBRARY_IMPL(rib_ext, CUDA, m) {
  m.impl("cam_flip_merge", &cam_flip_merge_cuda);
  m.impl("cam_flip_accumulate_", &cam_flip_accumulate_cuda);
  m.impl("cam_max_normalize", &cam_max_normalize_cuda);
}

}  // namespace cuda
}  // namespace rib_ext
