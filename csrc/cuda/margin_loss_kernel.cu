// The RIB clipped-margin loss, elementwise, CUDA.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../host_prep.h"
#include "../gndrp.h"

namespace rib_ext {
namespace cuda {

namespace {

constexpr int kThreads = 256;

int64_t grid_for(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, 65535 * 8); }

// grad == nullptr: forward (the loss term); else backward (grad * d term / d y).
template <typename scalar_t, typename acc_t>
__global__ void margin_loss_kernel(const scalar_t* __restrict__ y, const scalar_t* __restrict__ t,
                                   const scalar_t* __restrict__ grad, int64_t n, acc_t margin,
                                   bool paper, scalar_t* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const acc_t yi = static_cast<acc_t>(y[i]);
    const acc_t ti = static_cast<acc_t>(t[i]);
    out[i] = static_cast<scalar_t>(
        grad == nullptr ? margin_loss_term<acc_t>(yi, ti, margin, paper)
                        : static_cast<acc_t>(grad[i]) * margin_loss_grad<acc_t>(yi, ti, margin, paper));
  }
}

// The forward when a.grad is undefined, else the backward.
at::Tensor launch(const MarginLossArgs& a, double margin, bool paper) {
  const int64_t n = a.out.numel();
  if (n == 0) return a.out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.logits.scalar_type(), "margin_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    margin_loss_kernel<scalar_t, acc_t><<<grid_for(n), kThreads, 0, stream>>>(
        a.logits.const_data_ptr<scalar_t>(), a.labels.const_data_ptr<scalar_t>(),
        a.grad.defined() ? a.grad.const_data_ptr<scalar_t>() : nullptr, n,
        static_cast<acc_t>(margin), paper, a.out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return a.out;
}

}  // namespace

at::Tensor margin_loss_cuda(const at::Tensor& logits, const at::Tensor& labels, double margin,
                            bool paper) {
  const at::cuda::OptionalCUDAGuard guard(logits.device());
  return launch(prepare_margin_loss(logits, labels), margin, paper);
}

at::Tensor margin_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& logits,
                                     const at::Tensor& labels, double margin, bool paper) {
  const at::cuda::OptionalCUDAGuard guard(logits.device());
  return launch(prepare_margin_loss_backward(grad, logits, labels), margin, paper);
}

TORCH_LIBRARY_IMPL(rib_ext, CUDA, m) {
  m.impl("margin_loss", &margin_loss_cuda);
  m.impl("_margin_loss_backward", &margin_loss_backward_cuda);
}

}  // namespace cuda
}  // namespace rib_ext
