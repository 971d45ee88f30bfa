// The RIB clipped-margin loss, CUDA ops: arguments checked and outputs allocated (host_prep.h),
// the device guard and stream, then the kernel of margin_loss_kernel.cu.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../host_prep.h"
#include "launch.h"

namespace rib_ext {
namespace cuda {

namespace {

// The forward when a.grad is undefined, else the backward.
at::Tensor launch(const MarginLossArgs& a, double margin, bool paper) {
  const int64_t n = a.out.numel();
  if (n == 0) return a.out;
  launch_margin_loss(a.logits.scalar_type(), a.logits.const_data_ptr(), a.labels.const_data_ptr(),
                     a.grad.defined() ? a.grad.const_data_ptr() : nullptr, n, margin, paper,
                     a.out.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream());
  return a.out;
}

}  // namespace

at::Tensor margin_loss_cuda(const at::Tensor& logits, const at::Tensor& labels, double margin,
                            c10::string_view behaviour) {
  const bool paper = is_paper_behaviour(behaviour, "margin_loss");
  const c10::cuda::OptionalCUDAGuard guard(logits.device());
  return launch(prepare_margin_loss(logits, labels), margin, paper);
}

at::Tensor margin_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& logits,
                                     const at::Tensor& labels, double margin,
                                     c10::string_view behaviour) {
  const bool paper = is_paper_behaviour(behaviour, "_margin_loss_backward");
  const c10::cuda::OptionalCUDAGuard guard(logits.device());
  return launch(prepare_margin_loss_backward(grad, logits, labels), margin, paper);
}

TORCH_LIBRARY_IMPL(rib_ext, CUDA, m) {
  m.impl("margin_loss", &margin_loss_cuda);
  m.impl("_margin_loss_backward", &margin_loss_backward_cuda);
}

}  // namespace cuda
}  // namespace rib_ext
