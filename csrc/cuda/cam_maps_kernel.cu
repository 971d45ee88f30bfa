// Localization-map building blocks, CUDA kernels: flip-merge (+ accumulate) and per-plane
// max-normalisation. The ops around them: cam_maps_host.cpp.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>

#include "../cam_maps.h"
#include "block_reduce.cuh"
#include "launch.h"

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

}  // namespace

void launch_flip_merge(c10::ScalarType dtype, const void* a, const void* b, int64_t W, int64_t total,
                       bool accumulate, void* out, cudaStream_t stream) {
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65535 * 8);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "cam_flip_merge_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    flip_merge_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(a), static_cast<const scalar_t*>(b), W, total, accumulate,
        static_cast<acc_t*>(out));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void launch_max_normalize(c10::ScalarType dtype, const void* x, int64_t planes, int64_t hw,
                          double eps, void* out, cudaStream_t stream) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "cam_max_normalize_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    max_normalize_kernel<scalar_t, acc_t><<<planes, kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(x), hw, static_cast<acc_t>(eps), static_cast<scalar_t*>(out));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace cuda
}  // namespace rib_ext
