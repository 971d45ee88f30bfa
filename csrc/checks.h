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

}  // namespace rib_ext
