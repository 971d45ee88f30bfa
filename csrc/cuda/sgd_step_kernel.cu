// One SGD step of many weight slots, CUDA kernel (semantics: csrc/sgd_step.h). The op around it:
// sgd_step_host.cpp.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>

#include "../sgd_step.h"
#include "launch.h"

namespace rib_ext {
namespace cuda {

namespace {

constexpr int kThreads = 256;

// Grid-stride over all G * P elements; a slot that does not step reads nothing but its flag.
template <typename scalar_t>
__global__ void sgd_step_kernel(scalar_t* __restrict__ p, scalar_t* __restrict__ buf,
                                const scalar_t* __restrict__ g, const scalar_t* __restrict__ lrs,
                                const bool* __restrict__ go, const bool* __restrict__ first,
                                int64_t slots, int64_t n, int64_t split, scalar_t weight_decay,
                                scalar_t momentum) {
  const int64_t total = slots * n;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t s = k / n;
    if (!go[s]) continue;
    const int64_t i = k - s * n;
    sgd::step<scalar_t>(p + k, buf + k, g[k], lrs[2 * s + (i >= split)], first[s], weight_decay,
                        momentum);
  }
}

}  // namespace

void launch_sgd_step(c10::ScalarType dtype, void* params, void* bufs, const void* grads,
                     const void* lrs, const bool* go, const bool* first, int64_t slots, int64_t n,
                     int64_t split, double weight_decay, double momentum, cudaStream_t stream) {
  const int64_t total = slots * n;
  const int64_t grid = std::min<int64_t>((total + kThreads - 1) / kThreads, 65535 * 8);
  AT_DISPATCH_FLOATING_TYPES(dtype, "sgd_step_cuda", [&] {
    sgd_step_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        static_cast<scalar_t*>(params), static_cast<scalar_t*>(bufs),
        static_cast<const scalar_t*>(grads), static_cast<const scalar_t*>(lrs), go, first, slots, n,
        split, static_cast<scalar_t>(weight_decay), static_cast<scalar_t>(momentum));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace cuda
}  // namespace rib_ext
