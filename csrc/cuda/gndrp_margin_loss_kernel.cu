// Fused GNDRP pooling + RIB margin loss, CUDA. Forward: one block per plane writes the logit and
// its loss term; backward: one thread per element computes the plane's weight inline, so the whole
// backward is a single launch and reads grad_loss on the device (no host sync).
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
__global__ void gndrp_margin_loss_forward_kernel(const scalar_t* __restrict__ x,
                                                 const acc_t* __restrict__ labels, int64_t hw,
                                                 acc_t tau, acc_t margin, bool paper,
                                                 scalar_t* __restrict__ logits,
                                                 acc_t* __restrict__ plane_max,
                                                 acc_t* __restrict__ scale,
                                                 acc_t* __restrict__ terms) {
  const int64_t i = blockIdx.x;
  const acc_t t = labels[i];
  const auto r = gndrp_plane<scalar_t, acc_t>(x + i * hw, hw, t > acc_t(0), tau, paper);
  if (threadIdx.x == 0) {
    const scalar_t y = static_cast<scalar_t>(r.pooled);
    logits[i] = y;
    plane_max[i] = r.plane_max;
    scale[i] = r.scale;
    terms[i] = margin_loss_term<acc_t>(static_cast<acc_t>(y), t, margin, paper);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void gndrp_margin_loss_backward_kernel(
    const scalar_t* __restrict__ x, int64_t hw, int64_t total, const acc_t* __restrict__ grad_loss,
    const acc_t* __restrict__ labels, const acc_t* __restrict__ logits,
    const acc_t* __restrict__ plane_max, const acc_t* __restrict__ scale, acc_t tau, acc_t margin,
    bool paper, scalar_t* __restrict__ out) {
  const acc_t g = *grad_loss;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / hw;
    const acc_t t = labels[i];
    const acc_t v = static_cast<acc_t>(x[e]);
    acc_t w = 0;
    if (gndrp_kept<acc_t>(v, plane_max[i], t > acc_t(0), tau, paper)) {
      w = g * margin_loss_grad<acc_t>(logits[i], t, margin, paper) * scale[i];
    }
    out[e] = static_cast<scalar_t>(w);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gndrp_margin_loss_cuda(
    const at::Tensor& cam, const at::Tensor& labels, double tau, double margin, bool paper) {
  check_cam(cam, "gndrp_margin_loss");
  check_rows(cam, labels, "labels", "gndrp_margin_loss");
  const at::cuda::OptionalCUDAGuard guard(cam.device());
  const auto x = cam.contiguous();
  const int64_t planes = cam.size(0) * cam.size(1);
  const int64_t hw = cam.size(2) * cam.size(3);
  const auto acc_type = at::toOpMathType(cam.scalar_type());
  const auto t = labels.to(acc_type).contiguous();
  auto logits = at::empty({cam.size(0), cam.size(1)}, cam.options());
  auto plane_max = at::empty({cam.size(0), cam.size(1)}, cam.options().dtype(acc_type));
  auto scale = at::empty_like(plane_max);
  auto terms = at::zeros_like(plane_max);
  if (planes > 0) {
    const auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cam.scalar_type(), "gndrp_margin_loss_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      gndrp_margin_loss_forward_kernel<scalar_t, acc_t><<<planes, kPlaneThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), t.const_data_ptr<acc_t>(), hw, static_cast<acc_t>(tau),
          static_cast<acc_t>(margin), paper, logits.mutable_data_ptr<scalar_t>(),
          plane_max.mutable_data_ptr<acc_t>(), scale.mutable_data_ptr<acc_t>(),
          terms.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {terms.sum(), logits, plane_max, scale};
}

at::Tensor gndrp_margin_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& cam,
                                           const at::Tensor& labels, const at::Tensor& logits,
                                           const at::Tensor& plane_max, const at::Tensor& scale,
                                           double tau, double margin, bool paper) {
  check_cam(cam, "_gndrp_margin_loss_backward");
  check_rows(cam, labels, "labels", "_gndrp_margin_loss_backward");
  check_rows(cam, logits, "logits", "_gndrp_margin_loss_backward");
  TORCH_CHECK(grad_loss.numel() == 1, "_gndrp_margin_loss_backward: grad_loss must be a scalar");
  const at::cuda::OptionalCUDAGuard guard(cam.device());
  const auto x = cam.contiguous();
  const int64_t total = x.numel();
  const int64_t hw = cam.size(2) * cam.size(3);
  auto grad_cam = at::empty(cam.sizes(), cam.options().memory_format(at::MemoryFormat::Contiguous));
  if (total == 0) return grad_cam;
  const auto acc_type = at::toOpMathType(cam.scalar_type());
  const auto g = grad_loss.to(cam.device(), acc_type).contiguous();
  const auto t = labels.to(acc_type).contiguous();
  const auto y = logits.to(acc_type).contiguous();
  const auto m = plane_max.to(acc_type).contiguous();
  const auto s = scale.to(acc_type).contiguous();
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535 * 8);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cam.scalar_type(), "gndrp_margin_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    gndrp_margin_loss_backward_kernel<scalar_t, acc_t><<<blocks, threads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), hw, total, g.const_data_ptr<acc_t>(), t.const_data_ptr<acc_t>(),
        y.const_data_ptr<acc_t>(), m.const_data_ptr<acc_t>(), s.const_data_ptr<acc_t>(),
        static_cast<acc_t>(tau), static_cast<acc_t>(margin), paper,
        grad_cam.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_cam;
}

TORCH_LIBRARY_IMPL(rib_ext, CUDA, m) {
  m.impl("gndrp_margin_loss", &gndrp_margin_loss_cuda);
  m.impl("_gndrp_margin_loss_backward", &gndrp_margin_loss_backward_cuda);
}

}  // namespace cuda
}  // namespace rib_ext
