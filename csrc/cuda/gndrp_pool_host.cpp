// GNDRP masked pooling, CUDA ops: arguments checked and outputs allocated (host_prep.h), the
// device guard and stream, then the kernels of gndrp_pool_kernel.cu.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../host_prep.h"
#include "launch.h"

namespace rib_ext {
namespace cuda {

std::tuple<at::Tensor, at::Tensor, at::Tensor> gndrp_pool_cuda(const at::Tensor& cam,
                                                               const at::Tensor& present,
                                                               double tau,
                                                               c10::string_view behaviour) {
  const bool paper = is_paper_behaviour(behaviour, "gndrp_pool");
  const c10::cuda::OptionalCUDAGuard guard(cam.device());
  const auto a = prepare_gndrp_pool(cam, present, tau);
  if (a.cam.count == 0) return a.out.tuple();
  launch_gndrp_pool(cam.scalar_type(), a.cam.x.const_data_ptr(), a.present.const_data_ptr<bool>(),
                    a.cam.count, a.cam.hw, tau, paper, a.out.pooled.mutable_data_ptr(),
                    a.out.plane_max.mutable_data_ptr(), a.out.scale.mutable_data_ptr(),
                    c10::cuda::getCurrentCUDAStream());
  return a.out.tuple();
}

at::Tensor gndrp_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& cam,
                                    const at::Tensor& present, const at::Tensor& plane_max,
                                    const at::Tensor& scale, double tau,
                                    c10::string_view behaviour) {
  const bool paper = is_paper_behaviour(behaviour, "_gndrp_pool_backward");
  const c10::cuda::OptionalCUDAGuard guard(cam.device());
  const auto a = prepare_gndrp_pool_backward(grad, cam, present, plane_max, scale);
  if (a.grad_cam.numel() == 0) return a.grad_cam;
  launch_gndrp_pool_backward(cam.scalar_type(), a.cam.x.const_data_ptr(), a.cam.count, a.cam.hw,
                             a.grad.const_data_ptr(), a.present.const_data_ptr<bool>(),
                             a.plane_max.const_data_ptr(), a.scale.const_data_ptr(), tau, paper,
                             a.grad_cam.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream());
  return a.grad_cam;
}

TORCH_LIBRARY_IMPL(rib_ext, CUDA, m) {
  m.impl("gndrp_pool", &gndrp_pool_cuda);
  m.impl("_gndrp_pool_backward", &gndrp_pool_backward_cuda);
}

}  // namespace cuda
}  // namespace rib_ext
