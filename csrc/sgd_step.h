// One SGD step of many weight slots in one pass, with the learning rates, the slots that step and
// the slots on their first step all read from the device: torch.optim.SGD's update (dampening 0,
// no Nesterov), bit for bit, for a step that a CUDA graph can hold and that never waits for the host.
//
// sgd_step_(params, bufs, grads, lrs, go, first, split, weight_decay, momentum)
//   params, bufs  [G, P] float32 or float64, contiguous, updated in place (slot s = row s)
//   grads         [G, P] same dtype (any layout)
//   lrs           [G, 2] same dtype: the learning rate of elements [0, split) and of [split, P)
//   go, first     [G] bool: the slot steps; it is the slot's first step (no buffer yet)
// Per element of a slot that steps, in the order and rounding of the torch._foreach_* update
// (rib_ext/rib/engine.py: sgd_update_masked_), which computes `a + alpha * b` as one fused
// multiply-add on the CPU (vectorised) and on CUDA (contracted):
//   d   = weight_decay ? fma(weight_decay, p, g) : g
//   buf = first ? d : (buf * momentum) + d      (two roundings: two foreach calls)   [momentum != 0]
//   d   = buf                                                                          [momentum != 0]
//   p   = fma(-lr, d, p)
// A slot that does not step keeps its weights and buffer; its gradient is not read (NaN included).
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

namespace rib_ext {
namespace sgd {

// The separately rounded product and sum (no contraction into an FMA: nvcc would fuse them).
C10_HOST_DEVICE inline float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
C10_HOST_DEVICE inline double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
C10_HOST_DEVICE inline float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
C10_HOST_DEVICE inline double add_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

C10_HOST_DEVICE inline float fma_rn(float a, float b, float c) {
#ifdef __CUDA_ARCH__
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
C10_HOST_DEVICE inline double fma_rn(double a, double b, double c) {
#ifdef __CUDA_ARCH__
  return __fma_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// One element of a stepping slot: updates *p and *buf.
template <typename T>
C10_HOST_DEVICE inline void step(T* p, T* buf, T g, T lr, bool first, T weight_decay, T momentum) {
  T d = weight_decay != T(0) ? fma_rn(weight_decay, *p, g) : g;
  if (momentum != T(0)) {
    d = first ? d : add_rn(mul_rn(*buf, momentum), d);
    *buf = d;
  }
  *p = fma_rn(-lr, d, *p);
}

}  // namespace sgd
}  // namespace rib_ext
