// One SGD step of many weight slots, CUDA op: arguments checked (host_prep.h), the device guard
// and stream, then the kernel of sgd_step_kernel.cu. Nothing here reads a value from the device,
// so the op can be captured in a CUDA graph.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../host_prep.h"
#include "launch.h"

namespace rib_ext {
namespace cuda {

void sgd_step_cuda(at::Tensor& params, at::Tensor& bufs, const at::Tensor& grads,
                   const at::Tensor& lrs, const at::Tensor& go, const at::Tensor& first,
                   int64_t split, double weight_decay, double momentum) {
  const c10::cuda::OptionalCUDAGuard guard(params.device());
  const auto a = prepare_sgd_step(params, bufs, grads, lrs, go, first, split);
  if (params.numel() == 0) return;
  launch_sgd_step(params.scalar_type(), params.mutable_data_ptr(), bufs.mutable_data_ptr(),
                  a.grads.const_data_ptr(), a.lrs.const_data_ptr(), a.go.const_data_ptr<bool>(),
                  a.first.const_data_ptr<bool>(), params.size(0), params.size(1), split,
                  weight_decay, momentum, c10::cuda::getCurrentCUDAStream());
}

TORCH_LIBRARY_IMPL(rib_ext, CUDA, m) {
  m.impl("sgd_step_", &sgd_step_cuda);
}

}  // namespace cuda
}  // namespace rib_ext
