// Input validation shared by the CPU and CUDA kernels: messages name the argument and what is wrong.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

namespace rib_ext {

// The behaviour argument of the GNDRP and margin-loss ops: "authors" (the authors' released code)
// or "paper" (the paper's equations); the kernels take it as one bool, true for "paper".
inline bool is_paper_behaviour(c10::string_view behaviour, const char* op) {
  TORCH_CHECK(behaviour == "authors" || behaviour == "paper", op,
              ": behaviour must be 'authors' or 'paper', got '", std::string(behaviour), "'");
  return behaviour == "paper";
}

inline void check_cam(const at::Tensor& cam, const char* op) {
  TORCH_CHECK(cam.dim() == 4, op, ": cam must be [N, K, H, W], got ", cam.dim(), " dims ",
              cam.sizes());
  TORCH_CHECK(cam.numel() == 0 || cam.size(2) * cam.size(3) > 0, op,
              ": cam has an empty spatial size ", cam.sizes());
  TORCH_CHECK(at::isFloatingType(cam.scalar_type()), op, ": cam must be floating point, got ",
              cam.scalar_type());
}

// tau thresholds a map divided by its max: only (0, 1] means anything (NaN or <= 0 keeps no
// location, > 1 every one).
inline void check_tau(double tau, const char* op) {
  TORCH_CHECK(tau > 0.0 && tau <= 1.0, op, ": tau must be a number in (0, 1], got ", tau);
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

// sgd_step_'s arguments (csrc/sgd_step.h).
inline void check_sgd_step(const at::Tensor& params, const at::Tensor& bufs, const at::Tensor& grads,
                           const at::Tensor& lrs, const at::Tensor& go, const at::Tensor& first,
                           int64_t split) {
  constexpr const char* op = "sgd_step_";
  TORCH_CHECK(params.dim() == 2, op, ": params must be [G, P] (one row per weight slot), got ",
              params.sizes());
  TORCH_CHECK(params.scalar_type() == at::kFloat || params.scalar_type() == at::kDouble, op,
              ": params must be float32 or float64, got ", params.scalar_type());
  TORCH_CHECK(params.is_contiguous() && bufs.is_contiguous(), op,
              ": params and bufs are updated in place and must be contiguous");
  check_same_shape(params, bufs, "params", "bufs", op);
  check_same_shape(params, grads, "params", "grads", op);
  TORCH_CHECK(bufs.scalar_type() == params.scalar_type() && grads.scalar_type() == params.scalar_type()
                  && lrs.scalar_type() == params.scalar_type(),
              op, ": bufs, grads and lrs must have params' dtype ", params.scalar_type(), ", got ",
              bufs.scalar_type(), ", ", grads.scalar_type(), ", ", lrs.scalar_type());
  TORCH_CHECK(lrs.dim() == 2 && lrs.size(0) == params.size(0) && lrs.size(1) == 2, op,
              ": lrs must be [G, 2] = [", params.size(0), ", 2], got ", lrs.sizes());
  for (const auto* t : {&go, &first}) {
    TORCH_CHECK(t->scalar_type() == at::kBool && t->dim() == 1 && t->size(0) == params.size(0), op,
                ": go and first must be bool [G] = [", params.size(0), "], got ", t->scalar_type(),
                " ", t->sizes());
  }
  for (const auto* t : {&lrs, &go, &first}) {
    TORCH_CHECK(t->device() == params.device(), op, ": lrs, go and first must be on params' device ",
                params.device(), ", got ", t->device());
  }
  TORCH_CHECK(split >= 0 && split <= params.size(1), op, ": split must be in 0..", params.size(1),
              ", got ", split);
}

}  // namespace rib_ext
