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

#include "../host_prep.h"
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
  const at::cuda::OptionalCUDAGuard guard(cam.device());
  const auto a = prepare_gndrp_margin_loss(cam, labels);
  if (a.cam.count == 0) return a.tuple();
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cam.scalar_type(), "gndrp_margin_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    gndrp_margin_loss_forward_kernel<scalar_t, acc_t><<<a.cam.count, kPlaneThreads, 0, stream>>>(
        a.cam.x.const_data_ptr<scalar_t>(), a.labels.const_data_ptr<acc_t>(), a.cam.hw,
        static_cast<acc_t>(tau), static_cast<acc_t>(margin), paper,
        a.out.pooled.mutable_data_ptr<scalar_t>(), a.out.plane_max.mutable_data_ptr<acc_t>(),
        a.out.scale.mutable_data_ptr<acc_t>(), a.terms.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return a.tuple();
}

at::Tensor gndrp_margin_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& cam,
                                           const at::Tensor& labels, const at::Tensor& logits,
                                           const at::Tensor& plane_max, const at::Tensor& scale,
                                           double tau, double margin, bool paper) {
  const at::cuda::OptionalCUDAGuard guard(cam.device());
  const auto a = prepare_gndrp_margin_loss_backward(grad_loss, cam, labels, logits, plane_max, scale);
  const int64_t total = a.grad_cam.numel();
  if (total == 0) return a.grad_cam;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535 * 8);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cam.scalar_type(), "gndrp_margin_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    gndrp_margin_loss_backward_kernel<scalar_t, acc_t><<<blocks, threads, 0, stream>>>(
        a.cam.x.const_data_ptr<scalar_t>(), a.cam.hw, total, a.grad_loss.const_data_ptr<acc_t>(),
        a.labels.const_data_ptr<acc_t>(), a.logits.const_data_ptr<acc_t>(),
        a.plane_max.const_data_ptr<acc_t>(), a.scale.const_data_ptr<acc_t>(),
        static_cast<acc_t>(tau), static_cast<acc_t>(margin), paper,
        a.grad_cam.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return a.grad_cam;
}

TORCH_LIBRARY_IMPL(rib_ext, CUDA, m) {
  m.impl("gndrp_margin_loss", &gndrp_margin_loss_cuda);
  m.impl("_gndrp_margin_loss_backward", &gndrp_margin_loss_backward_cuda);
}

}  // namespace cuda
}  // namespace rib_ext
