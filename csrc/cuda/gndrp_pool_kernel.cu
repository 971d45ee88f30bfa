// GNDRP masked pooling, CUDA: forward = one block per (n, k) plane, backward = one thread per element.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"
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
  check_cam(cam, "gndrp_pool");
  check_rows(cam, present, "present", "gndrp_pool");
  TORCH_CHECK(present.scalar_type() == at::kBool, "gndrp_pool: present must be bool, got ",
              present.scalar_type());
  const at::cuda::OptionalCUDAGuard guard(cam.device());
  const auto x = cam.contiguous();
  const auto p = present.contiguous();
  const int64_t planes = cam.size(0) * cam.size(1);
  const int64_t hw = cam.size(2) * cam.size(3);
  const auto acc_type = at::toOpMathType(cam.scalar_type());
  auto pooled = at::empty({cam.size(0), cam.size(1)}, cam.options());
  auto plane_max = at::empty({cam.size(0), cam.size(1)}, cam.options().dtype(acc_type));
  auto scale = at::empty_like(plane_max);
  if (planes == 0) return {pooled, plane_max, scale};
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cam.scalar_type(), "gndrp_pool_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    gndrp_pool_forward_kernel<scalar_t, acc_t><<<planes, kPlaneThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), p.const_data_ptr<bool>(), hw, static_cast<acc_t>(tau), paper,
        pooled.mutable_data_ptr<scalar_t>(), plane_max.mutable_data_ptr<acc_t>(),
        scale.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {pooled, plane_max, scale};
}

at::Tensor gndrp_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& cam,
                                    const at::Tensor& present, const at::Tensor& plane_max,
                                    const at::Tensor& scale, double tau, bool paper) {
  check_cam(cam, "_gndrp_pool_backward");
  check_rows(cam, grad, "grad", "_gndrp_pool_backward");
  check_rows(cam, present, "present", "_gndrp_pool_backward");
  const at::cuda::OptionalCUDAGuard guard(cam.device());
  const auto x = cam.contiguous();
  const int64_t total = x.numel();
  const int64_t hw = cam.size(2) * cam.size(3);
  auto grad_cam = at::empty(cam.sizes(), cam.options().memory_format(at::MemoryFormat::Contiguous));
  if (total == 0) return grad_cam;
  const auto acc_type = at::toOpMathType(cam.scalar_type());
  const auto g = grad.to(acc_type).contiguous();
  const auto p = present.to(at::kBool).contiguous();
  const auto m = plane_max.to(acc_type).contiguous();
  const auto s = scale.to(acc_type).contiguous();
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535 * 8);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cam.scalar_type(), "gndrp_pool_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    gndrp_pool_backward_kernel<scalar_t, acc_t><<<blocks, threads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), hw, total, g.const_data_ptr<acc_t>(), p.const_data_ptr<bool>(),
        m.const_data_ptr<acc_t>(), s.const_data_ptr<acc_t>(), static_cast<acc_t>(tau), paper,
        grad_cam.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_cam;
}

TORCH_LIBRARY_IMPL(rib_ext, CUDA, m) {
  m.impl("gndrp_pool", &gndrp_pool_cuda);
  m.impl("_gndrp_pool_backward", &gndrp_pool_backward_cuda);
}

}  // namespace cuda
}  // namespace rib_ext
