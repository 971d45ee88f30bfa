// Operator schemas of rib_ext. Kernels live in csrc/cpu/<op>_kernel.cpp and csrc/cuda/<op>_kernel.cu
// (the CUDA ops around them in csrc/cuda/<op>_host.cpp), each file registering
// its own backend with TORCH_LIBRARY_IMPL; autograd and fake kernels are registered in Python
// (rib_ext/ops/). Shapes and semantics: csrc/gndrp.h, csrc/margin_loss.h, csrc/cam_maps.h,
// csrc/resize.h, csrc/sgd_step.h.
#include <torch/library.h>

TORCH_LIBRARY(rib_ext, m) {
  // behaviour: "authors" (the authors' released code) or "paper" (the paper's equations).
  // GNDRP pooling: (pooled [N,K], plane_max [N,K] f32, scale [N,K] f32)
  m.def("gndrp_pool(Tensor cam, Tensor present, float tau, str behaviour) -> (Tensor, Tensor, Tensor)");
  m.def(
      "_gndrp_pool_backward(Tensor grad, Tensor cam, Tensor present, Tensor plane_max, "
      "Tensor scale, float tau, str behaviour) -> Tensor");

  // GNDRP + margin loss in one pass: (loss [] f32, logits [N,K], plane_max, scale)
  m.def(
      "gndrp_margin_loss(Tensor cam, Tensor labels, float tau, float margin, str behaviour) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "_gndrp_margin_loss_backward(Tensor grad_loss, Tensor cam, Tensor labels, Tensor logits, "
      "Tensor plane_max, Tensor scale, float tau, float margin, str behaviour) -> Tensor");

  // Elementwise clipped-margin loss and its gradient w.r.t. the logits.
  m.def("margin_loss(Tensor logits, Tensor labels, float margin, str behaviour) -> Tensor");
  m.def(
      "_margin_loss_backward(Tensor grad, Tensor logits, Tensor labels, float margin, str behaviour) "
      "-> Tensor");

  // Localization-map building blocks.
  m.def("cam_flip_merge(Tensor cam, Tensor cam_flip) -> Tensor");
  m.def("cam_flip_accumulate_(Tensor(a!) acc, Tensor cam, Tensor cam_flip) -> ()");
  m.def("cam_max_normalize(Tensor maps, float eps) -> Tensor");

  // Pillow's bicubic resize of a uint8 [H, W, C] image, bit for bit: [height, width, C] uint8;
  // adaptive_order: Pillow >= 13's order of the two passes (else always horizontal first).
  m.def("resize_bicubic_u8(Tensor image, int height, int width, bool adaptive_order=True) -> Tensor");

  // One SGD step of G weight slots [G, P] in place, learning rates and flags on the device.
  m.def(
      "sgd_step_(Tensor(a!) params, Tensor(b!) bufs, Tensor grads, Tensor lrs, Tensor go, "
      "Tensor first, int split, float weight_decay, float momentum) -> ()");
}
