// GNDRP masked pooling, CUDA kernels: forward = one block per (n, k) plane, backward = one thread
// per element. The ops around them: gndrp_pool_host.cpp.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>

#include "gndrp_plane.cuh"
#include "launch.h"

namespace rib_ext {
namespace cuda {

namespace {

template <typename scalar_t, typename acc_t>
__global__ void gndrp_pool_forward_kernel(const scalar_t* __restrict__ x,
                                          const bool* __restrict__ present, int64_t hw, acc_t tau,
                                          bool paper, scalar_t* __restrict__ pooled,
                                          acc_t* __restrict__ plane_max, acc_t* __restrict__ scale) {
  const int64_t i = blockIdx.x;
  const auto r = gndrp_plane<scalar_t, acc_t>(x + i * hw, hw, present[i], tau, paper);
  if (threadIdx.x == 0) {
    pooled[i] = static_cast<scalar_t>(r.pooled);
    plane_max[i] = r.plane_max;
    scale[i] = r.scale;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void gndrp_pool_backward_kernel(const scalar_t* __restrict__ x, int64_t hw, int64_t total,
                                           const acc_t* __restrict__ grad,
                                           const bool* __restrict__ present,
                                           const acc_t* __restrict__ plane_max,
                                           const acc_t* __restrict__ scale, acc_t tau, bool paper,
                                           scalar_t* __restrict__ out) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / hw;
    const acc_t v = static_cast<acc_t>(x[e]);
    out[e] = static_cast<scalar_t>(
        gndrp_kept<acc_t>(v, plane_max[i], present[i], tau, paper) ? grad[i] * scale[i] : acc_t(0));
  }
}

}  // namespace

void launch_gndrp_pool(c10::ScalarType dtype, const void* cam, const bool* present, int64_t planes,
                       int64_t hw, double tau, bool paper, void* pooled, void* plane_max,
                       void* scale, cudaStream_t stream) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "gndrp_pool_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    gndrp_pool_forward_kernel<scalar_t, acc_t><<<planes, kPlaneThreads, 0, stream>>>(
        static_cast<const scalar_t*>(cam), present, hw, static_cast<acc_t>(tau), paper,
        static_cast<scalar_t*>(pooled), static_cast<acc_t*>(plane_max), static_cast<acc_t*>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void launch_gndrp_pool_backward(c10::ScalarType dtype, const void* cam, int64_t planes, int64_t hw,
                                const void* grad, const bool* present, const void* plane_max,
                                const void* scale, double tau, bool paper, void* out,
                                cudaStream_t stream) {
  const int64_t total = planes * hw;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535 * 8);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "gndrp_pool_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    gndrp_pool_backward_kernel<scalar_t, acc_t><<<blocks, threads, 0, stream>>>(
        static_cast<const scalar_t*>(cam), hw, total, static_cast<const acc_t*>(grad), present,
        static_cast<const acc_t*>(plane_max), static_cast<const acc_t*>(scale),
        static_cast<acc_t>(tau), paper, static_cast<scalar_t*>(out));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace cuda
}  // namespace rib_ext
