// The RIB clipped-margin loss, elementwise, CUDA kernel. The ops around it: margin_loss_host.cpp.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>

#include "../margin_loss.h"
#include "launch.h"

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

}  // namespace

void launch_margin_loss(c10::ScalarType dtype, const void* y, const void* t, const void* grad,
                        int64_t n, double margin, bool paper, void* out, cudaStream_t stream) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "margin_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    margin_loss_kernel<scalar_t, acc_t><<<grid_for(n), kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(y), static_cast<const scalar_t*>(t),
        static_cast<const scalar_t*>(grad), n, static_cast<acc_t>(margin), paper,
        static_cast<scalar_t*>(out));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace cuda
}  // namespace rib_ext
