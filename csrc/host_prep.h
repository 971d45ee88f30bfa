// Host-side work shared by the CPU and CUDA kernels, written once: argument checks, contiguous
// inputs, outputs allocated, the forward's saved tensors cast to the accumulation (opmath) type.
// A backend keeps its device guard (set before calling these, so copies run on the input's
// device), its dispatch and its kernel launch or parallel_for loop.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <ATen/OpMathType.h>
#include <c10/util/accumulate.h>

#include <tuple>

#include "checks.h"

namespace rib_ext {

// A [..., H, W] tensor as `count` contiguous planes of hw = H*W values.
struct Planes {
  at::Tensor x;
  int64_t count;
  int64_t hw;
};

inline Planes as_planes(const at::Tensor& t) {
  const auto sizes = t.sizes();
  return {t.contiguous(), c10::multiply_integers(sizes.begin(), sizes.end() - 2),
          sizes[t.dim() - 2] * sizes[t.dim() - 1]};
}

// t in cam's opmath type, contiguous (the saved [N, K] tensors a backward reads).
inline at::Tensor as_opmath(const at::Tensor& t, const at::Tensor& cam) {
  return t.to(at::toOpMathType(cam.scalar_type())).contiguous();
}

// An output of cam's shape and `dtype`, contiguous whatever cam's layout (the workers index densely).
inline at::Tensor new_dense_like(const at::Tensor& cam, at::ScalarType dtype) {
  return at::empty(cam.sizes(), cam.options().dtype(dtype).memory_format(at::MemoryFormat::Contiguous));
}

// ---- cam_flip_merge, cam_flip_accumulate_ -------------------------------------------------------
// merge_into(out, a, b, accumulate) is the backend's worker: contiguous a, b (cam, cam_flip) and
// a contiguous out in cam's opmath type.

template <typename MergeInto>
at::Tensor cam_flip_merge_host(const at::Tensor& cam, const at::Tensor& cam_flip,
                               const MergeInto& merge_into) {
  check_flip_pair(cam, cam_flip, "cam_flip_merge");
  auto out = new_dense_like(cam, at::toOpMathType(cam.scalar_type()));
  merge_into(out, cam.contiguous(), cam_flip.contiguous(), /*accumulate=*/false);
  return out;
}

template <typename MergeInto>
void cam_flip_accumulate_host(at::Tensor& acc, const at::Tensor& cam, const at::Tensor& cam_flip,
                              const MergeInto& merge_into) {
  check_flip_pair(cam, cam_flip, "cam_flip_accumulate_");
  check_same_shape(acc, cam, "acc", "cam", "cam_flip_accumulate_");
  TORCH_CHECK(acc.scalar_type() == at::toOpMathType(cam.scalar_type()),
              "cam_flip_accumulate_: acc must be ", at::toOpMathType(cam.scalar_type()),
              " for a ", cam.scalar_type(), " cam, got ", acc.scalar_type());
  if (acc.is_contiguous()) {
    merge_into(acc, cam.contiguous(), cam_flip.contiguous(), /*accumulate=*/true);
  } else {  // in place into a strided acc: accumulate into a dense copy, then write it back
    auto dense = acc.contiguous();
    merge_into(dense, cam.contiguous(), cam_flip.contiguous(), /*accumulate=*/true);
    acc.copy_(dense);
  }
}

// ---- cam_max_normalize ------------------------------------------------------------------------

struct MaxNormalizeArgs {
  Planes maps;
  at::Tensor out;  // maps' shape and dtype, contiguous
};

inline MaxNormalizeArgs prepare_cam_max_normalize(const at::Tensor& maps) {
  TORCH_CHECK(maps.dim() >= 2, "cam_max_normalize: maps must be [..., H, W], got ", maps.sizes());
  TORCH_CHECK(at::isFloatingType(maps.scalar_type()), "cam_max_normalize: maps must be floating point");
  return {as_planes(maps), new_dense_like(maps, maps.scalar_type())};
}

// ---- gndrp_pool, gndrp_margin_loss (forward) ---------------------------------------------------

// The per-plane [N, K] results: pooled (or logits) in cam's dtype, plane max and scale in opmath.
struct GndrpOutputs {
  at::Tensor pooled, plane_max, scale;

  std::tuple<at::Tensor, at::Tensor, at::Tensor> tuple() const { return {pooled, plane_max, scale}; }
};

inline GndrpOutputs new_gndrp_outputs(const at::Tensor& cam) {
  auto pooled = at::empty({cam.size(0), cam.size(1)}, cam.options());
  auto plane_max = at::empty({cam.size(0), cam.size(1)},
                             cam.options().dtype(at::toOpMathType(cam.scalar_type())));
  auto scale = at::empty_like(plane_max);
  return {pooled, plane_max, scale};
}

struct GndrpPoolArgs {
  Planes cam;
  at::Tensor present;  // bool, contiguous
  GndrpOutputs out;
};

inline GndrpPoolArgs prepare_gndrp_pool(const at::Tensor& cam, const at::Tensor& present,
                                        double tau) {
  check_cam(cam, "gndrp_pool");
  check_tau(tau, "gndrp_pool");
  check_rows(cam, present, "present", "gndrp_pool");
  TORCH_CHECK(present.scalar_type() == at::kBool, "gndrp_pool: present must be bool, got ",
              present.scalar_type());
  return {as_planes(cam), present.contiguous(), new_gndrp_outputs(cam)};
}

struct GndrpLossArgs {
  Planes cam;
  at::Tensor labels;  // opmath, contiguous
  GndrpOutputs out;   // out.pooled holds the logits
  at::Tensor terms;   // per-plane loss terms (opmath, zero-filled), summed into the loss

  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tuple() const {
    return {terms.sum(), out.pooled, out.plane_max, out.scale};
  }
};

inline GndrpLossArgs prepare_gndrp_margin_loss(const at::Tensor& cam, const at::Tensor& labels,
                                               double tau) {
  check_cam(cam, "gndrp_margin_loss");
  check_tau(tau, "gndrp_margin_loss");
  check_rows(cam, labels, "labels", "gndrp_margin_loss");
  auto out = new_gndrp_outputs(cam);
  auto terms = at::zeros_like(out.plane_max);
  return {as_planes(cam), as_opmath(labels, cam), out, terms};
}

// ---- _gndrp_pool_backward, _gndrp_margin_loss_backward ------------------------------------------
// Inputs in opmath (present in bool), contiguous; grad_cam has cam's shape and dtype, contiguous.

struct GndrpPoolGradArgs {
  Planes cam;
  at::Tensor grad, present, plane_max, scale;
  at::Tensor grad_cam;
};

inline GndrpPoolGradArgs prepare_gndrp_pool_backward(const at::Tensor& grad, const at::Tensor& cam,
                                                     const at::Tensor& present,
                                                     const at::Tensor& plane_max,
                                                     const at::Tensor& scale) {
  check_cam(cam, "_gndrp_pool_backward");
  check_rows(cam, grad, "grad", "_gndrp_pool_backward");
  check_rows(cam, present, "present", "_gndrp_pool_backward");
  return {as_planes(cam),
          as_opmath(grad, cam),
          present.to(at::kBool).contiguous(),
          as_opmath(plane_max, cam),
          as_opmath(scale, cam),
          new_dense_like(cam, cam.scalar_type())};
}

struct GndrpLossGradArgs {
  Planes cam;
  at::Tensor grad_loss;  // one value, on cam's device (the CUDA kernel reads it there: no host sync)
  at::Tensor labels, logits, plane_max, scale;
  at::Tensor grad_cam;
};

inline GndrpLossGradArgs prepare_gndrp_margin_loss_backward(
    const at::Tensor& grad_loss, const at::Tensor& cam, const at::Tensor& labels,
    const at::Tensor& logits, const at::Tensor& plane_max, const at::Tensor& scale) {
  check_cam(cam, "_gndrp_margin_loss_backward");
  check_rows(cam, labels, "labels", "_gndrp_margin_loss_backward");
  check_rows(cam, logits, "logits", "_gndrp_margin_loss_backward");
  TORCH_CHECK(grad_loss.numel() == 1, "_gndrp_margin_loss_backward: grad_loss must be a scalar");
  return {as_planes(cam),
          grad_loss.to(cam.device(), at::toOpMathType(cam.scalar_type())).contiguous(),
          as_opmath(labels, cam),
          as_opmath(logits, cam),
          as_opmath(plane_max, cam),
          as_opmath(scale, cam),
          new_dense_like(cam, cam.scalar_type())};
}

// ---- margin_loss, _margin_loss_backward ---------------------------------------------------------

struct MarginLossArgs {
  at::Tensor logits;  // contiguous
  at::Tensor labels;  // logits' dtype, contiguous
  at::Tensor grad;    // logits' dtype, contiguous; undefined in the forward
  at::Tensor out;     // logits' shape and dtype
};

inline MarginLossArgs prepare_margin_loss(const at::Tensor& logits, const at::Tensor& labels) {
  check_same_shape(logits, labels, "logits", "labels", "margin_loss");
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), "margin_loss: logits must be floating point");
  const auto y = logits.contiguous();
  return {y, labels.to(logits.scalar_type()).contiguous(), at::Tensor(), at::empty(y.sizes(), y.options())};
}

inline MarginLossArgs prepare_margin_loss_backward(const at::Tensor& grad, const at::Tensor& logits,
                                                   const at::Tensor& labels) {
  check_same_shape(logits, labels, "logits", "labels", "_margin_loss_backward");
  check_same_shape(logits, grad, "logits", "grad", "_margin_loss_backward");
  const auto y = logits.contiguous();
  return {y, labels.to(logits.scalar_type()).contiguous(), grad.to(logits.scalar_type()).contiguous(),
          at::empty(y.sizes(), y.options())};
}

// resize_bicubic_u8 (csrc/resize.h): arguments checked, the image contiguous, the
// [height, width, C] uint8 output allocated.
struct ResizeIO {
  at::Tensor in;
  at::Tensor out;
};

inline ResizeIO prepare_resize_bicubic_u8(const at::Tensor& image, int64_t height, int64_t width) {
  check_resize_bicubic_u8(image, height, width);
  auto in = image.contiguous();
  auto out = at::empty({height, width, in.size(2)},
                       in.options().memory_format(at::MemoryFormat::Contiguous));
  return {in, out};
}

// sgd_step_ (csrc/sgd_step.h): arguments checked; the gradients, learning rates and flags contiguous.
struct SgdStepArgs {
  at::Tensor grads, lrs, go, first;
};

inline SgdStepArgs prepare_sgd_step(const at::Tensor& params, const at::Tensor& bufs,
                                    const at::Tensor& grads, const at::Tensor& lrs,
                                    const at::Tensor& go, const at::Tensor& first, int64_t split) {
  check_sgd_step(params, bufs, grads, lrs, go, first, split);
  return {grads.contiguous(), lrs.contiguous(), go.contiguous(), first.contiguous()};
}

}  // namespace rib_ext
