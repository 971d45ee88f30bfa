// The RIB clipped-margin loss, elementwise (the reduction is done by the Python wrapper).
//
// logits [N, K] (float32/float64; half on CUDA), labels [N, K] same shape, margin m.
// behaviour "paper":   out = -t * min(m, y),  d out / d y = -t where y < m, 0 where y >= m
// behaviour "authors": out = -t * y,          d out / d y = -t  (the authors' code: no clip; the
//                                                     margin is a stop criterion of the engine)
// The kernels take the behaviour as the bool paper; the fused GNDRP op (gndrp.h) uses the same terms.
#pragma once

#include <c10/macros/Macros.h>

namespace rib_ext {

// The RIB loss term of one (row, class): -t * min(m, y) (paper) or -t * y (authors).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t margin_loss_term(acc_t y, acc_t t, acc_t margin, bool paper) {
  return paper ? -t * (y < margin ? y : margin) : -t * y;
}

// d(term)/dy: -t where the clip is inactive, 0 where y >= m (paper); -t everywhere (authors).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t margin_loss_grad(acc_t y, acc_t t, acc_t margin, bool paper) {
  return (paper && !(y < margin)) ? acc_t(0) : -t;
}

}  // namespace rib_ext

