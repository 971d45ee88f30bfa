// The fused GNDRP pooling + RIB margin loss, CUDA ops: arguments checked and outputs allocated
// (host_prep.h), the device guard and stream, then the kernels of gndrp_margin_loss_kernel.cu.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../host_prep.h"
#include "launch.h"

namespace rib_ext {
namespace cuda {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gndrp_margin_loss_cuda(
    const at::Tensor& cam, const at::Tensor& labels, double tau, double margin,
    c10::string_view behaviour) {
  const bool paper = is_paper_behaviour(behaviour, "gndrp_margin_loss");
  const c10::cuda::OptionalCUDAGuard guard(cam.device());
  const auto a = prepare_gndrp_margin_loss(cam, labels, tau);
  if (a.cam.count == 0) return a.tuple();
  launch_gndrp_margin_loss(cam.scalar_type(), a.cam.x.const_data_ptr(), a.labels.const_data_ptr(),
                           a.cam.count, a.cam.hw, tau, margin, paper,
                           a.out.pooled.mutable_data_ptr(), a.out.plane_max.mutable_data_ptr(),
                           a.out.scale.mutable_data_ptr(), a.terms.mutable_data_ptr(),
                           c10::cuda::getCurrentCUDAStream());
  return a.tuple();
}

at::Tensor gndrp_margin_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& cam,
                                           const at::Tensor& labels, const at::Tensor& logits,
                                           const at::Tensor& plane_max, const at::Tensor& scale,
                                           double tau, double margin, c10::string_view behaviour) {
  const bool paper = is_paper_behaviour(behaviour, "_gndrp_margin_loss_backward");
  const c10::cuda::OptionalCUDAGuard guard(cam.device());
  const auto a = prepare_gndrp_margin_loss_backward(grad_loss, cam, labels, logits, plane_max, scale);
  if (a.grad_cam.numel() == 0) return a.grad_cam;
  launch_gndrp_margin_loss_backward(
      cam.scalar_type(), a.cam.x.const_data_ptr(), a.cam.count, a.cam.hw,
      a.grad_loss.const_data_ptr(), a.labels.const_data_ptr(), a.logits.const_data_ptr(),
      a.plane_max.const_data_ptr(), a.scale.const_data_ptr(), tau, margin, paper,
      a.grad_cam.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream());
  return a.grad_cam;
}

TORCH_LIBRARY_IMPL(rib_ext, CUDA, m) {
  m.impl("gndrp_margin_loss", &gndrp_margin_loss_cuda);
  m.impl("_gndrp_margin_loss_backward", &gndrp_margin_loss_backward_cuda);
}

}  // namespace cuda
}  // namespace rib_ext
