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

#include "rounding.h"

namespace rib_ext {
namespace sgd {

// One element of a stepping slot: updates *p and *buf.
template <typename T>
C10_HOST_DEVICE inline void step(T* p, T* buf, T g, T lr, bool first, T weight_decay, T momentum) {
  T d = weight_decay != T(0) ? rn::fma(weight_decay, *p, g) : g;
  if (momentum != T(0)) {
    d = first ? d : rn::add(rn::mul(*buf, momentum), d);
    *buf = d;
  }
  *p = rn::fma(-lr, d, *p);
}

}  // namespace sgd
}  // namespace rib_ext
