// Localization-map building blocks, CUDA ops: arguments checked and outputs allocated
// (host_prep.h), the device guard and stream, then the kernels of cam_maps_kernel.cu.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../host_prep.h"
#include "launch.h"

namespace rib_ext {
namespace cuda {

namespace {

void flip_merge_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  const int64_t total = a.numel();
  if (total == 0) return;
  launch_flip_merge(a.scalar_type(), a.const_data_ptr(), b.const_data_ptr(), a.size(-1), total,
                    accumulate, out.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream());
}

}  // namespace

at::Tensor cam_flip_merge_cuda(const at::Tensor& cam, const at::Tensor& cam_flip) {
  const c10::cuda::OptionalCUDAGuard guard(cam.device());
  return cam_flip_merge_host(cam, cam_flip, flip_merge_into);
}

void cam_flip_accumulate_cuda(at::Tensor& acc, const at::Tensor& cam, const at::Tensor& cam_flip) {
  const c10::cuda::OptionalCUDAGuard guard(cam.device());
  cam_flip_accumulate_host(acc, cam, cam_flip, flip_merge_into);
}

at::Tensor cam_max_normalize_cuda(const at::Tensor& maps, double eps) {
  const c10::cuda::OptionalCUDAGuard guard(maps.device());
  const auto a = prepare_cam_max_normalize(maps);
  if (a.out.numel() == 0) return a.out;
  launch_max_normalize(maps.scalar_type(), a.maps.x.const_data_ptr(), a.maps.count, a.maps.hw, eps,
                       a.out.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream());
  return a.out;
}

TORCH_LIBRARY_IMPL(rib_ext, CUDA, m) {
  m.impl("cam_flip_merge", &cam_flip_merge_cuda);
  m.impl("cam_flip_accumulate_", &cam_flip_accumulate_cuda);
  m.impl("cam_max_normalize", &cam_max_normalize_cuda);
}

}  // namespace cuda
}  // namespace rib_ext
