// Input validation shared by the CPU and CUDA kernels: messages name the argument and what is wrong.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace rib_ext {

inline void check_cam(const at::Tensor& cam, const char* op) {
  TORCH_CHECK(cam.dim() == 4, op, ": cam must be [N, K, H, W], got ", cam.dim(), " dims ",
              cam.sizes());
  TORCH_CHECK(cam.numel() == 0 || cam.size(2) * cam.size(3) > 0, op,
              ": cam has an empty spatial size ", cam.sizes());
  TORCH_CHECK(at::isFloatingType(cam.scalar_type()), op, ": cam must be floating point, got ",
              cam.scalar_type());
}

inline void check_rows(const at::Tensor& cam, const at::Tensor& t, const char* name,
                       const char* op) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == cam.size(0) && t.size(1) == cam.size(1), op, ": ",
              name, " must be [N, K] = [", cam.size(0), ", ", cam.size(1), "], got ", t.sizes());
  TORCH_CHECK(t.device() == cam.device(), op, ": ", name, " is on ", t.device(),
              " but cam is on ", cam.device());
}

inline void check_same_shape(const at::Tensor& a, const at::Tensor& b, const char* name_a,
                             const char* name_b, const char* op) {
  TORCH_CHECK(a.sizes() == b.sizes(), op, ": ", name_a, " ", a.sizes(), " and ", name_b, " ",
              b.sizes(), " must have the same shape");
  TORCH_CHECK(a.device() == b.device(), op, ": ", name_a, " is on ", a.device(), " but ", name_b,
              " is on ", b.device());
}

// cam and cam_flip of the flip-merge ops: [..., H, W], the same shape, on the same device.
inline void check_flip_pair(const at::Tensor& cam, const at::Tensor& cam_flip, const char* op) {
  TORCH_CHECK(cam.dim() >= 2, op, ": cam must be [..., H, W], got ", cam.sizes());
  check_same_shape(cam, cam_flip, "cam", "cam_flip", op);
}

// resize_bicubic_u8's arguments (csrc/resize.h): uint8 [H, W, C], C in 1..4, sides in 1..2^24.
inline void check_resize_bicubic_u8(const at::Tensor& image, int64_t height, int64_t width) {
  constexpr const char* op = "resize_bicubic_u8";
  constexpr int64_t max_side = int64_t(1) << 24;
  TORCH_CHECK(image.scalar_type() == at::kByte, op, ": image must be uint8, got ",
              image.scalar_type());
  TORCH_CHECK(image.dim() == 3, op, ": image must be [H, W, C] (channels last), got ", image.dim(),
              " dims ", image.sizes());
  TORCH_CHECK(image.size(2) >= 1 && image.size(2) <= 4, op,
              ": image must have 1 to 4 channels (last dim), got ", image.size(2), " in ",
              image.sizes());
  TORCH_CHECK(image.size(0) >= 1 && image.size(1) >= 1 && image.size(0) <= max_side &&
                  image.size(1) <= max_side,
              op, ": image sides must be in 1..", max_side, ", got ", image.sizes());
  TORCH_CHECK(height >= 1 && width >= 1 && height <= max_side && width <= max_side, op,
              ": output size must be in 1..", max_side, ", got height ", height, ", width ", width);
}

}  // namespace rib_ext
