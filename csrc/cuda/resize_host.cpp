// Pillow's bicubic resize of uint8 images, CUDA op: arguments checked and the output allocated
// (host_prep.h), the window tables' scratch and the pass order, then the kernels of resize_kernel.cu.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../host_prep.h"
#include "launch.h"

namespace rib_ext {
namespace cuda {

at::Tensor resize_bicubic_u8_cuda(const at::Tensor& image, int64_t height, int64_t width,
                                  bool adaptive_order) {
  const c10::cuda::OptionalCUDAGuard guard(image.device());
  auto [in, out] = prepare_resize_bicubic_u8(image, height, width);
  const int64_t H = in.size(0), W = in.size(1), C = in.size(2);
  const bool need_horizontal = width != W, need_vertical = height != H;
  if (!need_horizontal && !need_vertical) return out.copy_(in);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  // Both axes' windows in one scratch buffer and one launch (an unneeded axis gets no entries).
  resize::Axis ax = resize::make_axis(W, width), ay = resize::make_axis(H, height);
  if (!need_horizontal) ax.out_size = 0;
  if (!need_vertical) ay.out_size = 0;
  const int64_t nx = resize_table_size(ax);
  auto scratch = at::empty({nx + resize_table_size(ay)}, in.options().dtype(at::kInt));
  int32_t* tx = scratch.mutable_data_ptr<int32_t>();
  const int32_t* ty = tx + nx;
  launch_resize_windows(ax, ay, tx, stream);

  const uint8_t* src = in.const_data_ptr<uint8_t>();
  uint8_t* dst = out.mutable_data_ptr<uint8_t>();
  if (!need_horizontal || !need_vertical) {
    if (need_horizontal) {
      launch_resize_horizontal(src, H, W, C, ax, tx, dst, stream);
    } else {
      launch_resize_vertical(src, W * C, ay, ty, dst, stream);
    }
  } else if (resize::vertical_first(H, W, height, width, adaptive_order)) {
    auto mid = at::empty({height, W, C}, out.options());
    launch_resize_vertical(src, W * C, ay, ty, mid.mutable_data_ptr<uint8_t>(), stream);
    launch_resize_horizontal(mid.const_data_ptr<uint8_t>(), height, W, C, ax, tx, dst, stream);
  } else {
    auto mid = at::empty({H, width, C}, out.options());
    launch_resize_horizontal(src, H, W, C, ax, tx, mid.mutable_data_ptr<uint8_t>(), stream);
    launch_resize_vertical(mid.const_data_ptr<uint8_t>(), width * C, ay, ty, dst, stream);
  }
  return out;
}

TORCH_LIBRARY_IMPL(rib_ext, CUDA, m) {
  m.impl("resize_bicubic_u8", &resize_bicubic_u8_cuda);
}

}  // namespace cuda
}  // namespace rib_ext
