// Fused GNDRP pooling + RIB margin loss, CUDA kernels. Forward: one block per plane writes the
// logit and its loss term; backward: one thread per element computes the plane's weight inline, so
// the whole backward is a single launch and reads grad_loss on the device (no host sync). The ops
// around them: gndrp_margin_loss_host.cpp.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>

#include "gndrp_plane.cuh"
#include "launch.h"

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

void launch_gndrp_margin_loss(c10::ScalarType dtype, const void* cam, const void* labels,
                              int64_t planes, int64_t hw, double tau, double margin, bool paper,
                              void* logits, void* plane_max, void* scale, void* terms,
                              cudaStream_t stream) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "gndrp_margin_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    gndrp_margin_loss_forward_kernel<scalar_t, acc_t><<<planes, kPlaneThreads, 0, stream>>>(
        static_cast<const scalar_t*>(cam), static_cast<const acc_t*>(labels), hw,
        static_cast<acc_t>(tau), static_cast<acc_t>(margin), paper, static_cast<scalar_t*>(logits),
        static_cast<acc_t*>(plane_max), static_cast<acc_t*>(scale), static_cast<acc_t*>(terms));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void launch_gndrp_margin_loss_backward(c10::ScalarType dtype, const void* cam, int64_t planes,
                                       int64_t hw, const void* grad_loss, const void* labels,
                                       const void* logits, const void* plane_max,
                                       const void* scale, double tau, double margin, bool paper,
                                       void* out, cudaStream_t stream) {
  const int64_t total = planes * hw;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535 * 8);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "gndrp_margin_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    gndrp_margin_loss_backward_kernel<scalar_t, acc_t><<<blocks, threads, 0, stream>>>(
        static_cast<const scalar_t*>(cam), hw, total, static_cast<const acc_t*>(grad_loss),
        static_cast<const acc_t*>(labels), static_cast<const acc_t*>(logits),
        static_cast<const acc_t*>(plane_max), static_cast<const acc_t*>(scale),
        static_cast<acc_t>(tau), static_cast<acc_t>(margin), paper, static_cast<scalar_t*>(out));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace cuda
}  // namespace rib_ext
