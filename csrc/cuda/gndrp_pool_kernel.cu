// GNDRP masked pooling, CUDA: forward = one block per (n, k) plane, backward = one thread per element.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../host_prep.h"
#include "gndrp_plane.cuh"

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

std::tuple<at::Tensor, at::Tensor, at::Tensor> gndrp_pool_cuda(const at::Tensor& cam,
                                                               const at::Tensor& present,
                                                               double tau, bool paper) {
  const at::cuda::OptionalCUDAGuard guard(cam.device());
  const auto a = prepare_gndrp_pool(cam, present);
  if (a.cam.count == 0) return a.out.tuple();
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cam.scalar_type(), "gndrp_pool_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    gndrp_pool_forward_kernel<scalar_t, acc_t><<<a.cam.count, kPlaneThreads, 0, stream>>>(
        a.cam.x.const_data_ptr<scalar_t>(), a.present.const_data_ptr<bool>(), a.cam.hw,
        static_cast<acc_t>(tau), paper, a.out.pooled.mutable_data_ptr<scalar_t>(),
        a.out.plane_max.mutable_data_ptr<acc_t>(), a.out.scale.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return a.out.tuple();
}

at::Tensor gndrp_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& cam,
                                    const at::Tensor& present, const at::Tensor& plane_max,
                                    const at::Tensor& scale, double tau, bool paper) {
  const at::cuda::OptionalCUDAGuard guard(cam.device());
  const auto a = prepare_gndrp_pool_backward(grad, cam, present, plane_max, scale);
  const int64_t total = a.grad_cam.numel();
  if (total == 0) return a.grad_cam;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535 * 8);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cam.scalar_type(), "gndrp_pool_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    gndrp_pool_backward_kernel<scalar_t, acc_t><<<blocks, threads, 0, stream>>>(
        a.cam.x.const_data_ptr<scalar_t>(), a.cam.hw, total, a.grad.const_data_ptr<acc_t>(),
        a.present.const_data_ptr<bool>(), a.plane_max.const_data_ptr<acc_t>(),
        a.scale.const_data_ptr<acc_t>(), static_cast<acc_t>(tau), paper,
        a.grad_cam.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return a.grad_cam;
}

TORCH_LIBRARY_IMPL(rib_ext, CUDA, m) {
  m.impl("gndrp_pool", &gndrp_pool_cuda);
  m.impl("_gndrp_pool_backward", &gndrp_pool_backward_cuda);
}

}  // namespace cuda
}  // namespace rib_ext
