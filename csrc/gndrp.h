// GNDRP masked pooling and its fused form with the RIB margin loss.
//
// cam      [N, K, H, W]  raw (pre-ReLU) class activation maps; float32/float64 on CPU,
//                        float32/float16/bfloat16 on CUDA (accumulation in float32 or wider)
// present  [N, K] bool   the row's label: true where class k is in row n's image
// labels   [N, K]        same dtype as cam's accumulation type is not required; read as float
// tau                    threshold on the max-normalised map
// paper                  false: the authors' released code; true: the paper's equation
//
// For every plane (n, k):
//   M = max_u cam[n,k,u]                                   (treated as a constant: no gradient)
//   kept(u) = true                          if !present[n,k] or M <= 0
//           = cam[n,k,u] / M <  tau         (reference)
//           = cam[n,k,u] / M <= tau         (paper)
//   pooled[n,k] = sum_{kept} cam[n,k,u] * scale[n,k]
//   scale = 1 / (H*W)                       (reference)
//         = 1 / #kept, or 0 if #kept == 0   (paper)
//
// M <= 0 means the class has no positive evidence anywhere, so no location is "discriminative" and
// every one is pooled (the plane degenerates to average pooling). The authors' code divides by M
// without a guard: for M < 0 every normalised value is >= 1, nothing is kept and the logit is 0; for
// M == 0 it divides by zero (negative locations become -inf and are kept, zeros become NaN and are
// dropped, which sums to the same as keeping all). We define both cases as "keep all": no NaN, no
// division by zero, and a gradient that still pushes the class up.
//
// Every op returns (pooled-or-logits, plane_max, scale) so that backward is one pass over cam.
#pragma once

#include <c10/macros/Macros.h>

namespace rib_ext {

template <typename acc_t>
C10_HOST_DEVICE inline bool gndrp_kept(acc_t v, acc_t plane_max, bool present, acc_t tau,
                                       bool paper) {
  if (!present || !(plane_max > acc_t(0))) return true;
  const acc_t r = v / plane_max;  // divide (not v < tau*M) to match the reference bit for bit
  return paper ? (r <= tau) : (r < tau);
}

// The RIB loss term of one (row, class): -t * min(m, y) (paper) or -t * y (reference).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t margin_loss_term(acc_t y, acc_t t, acc_t margin, bool paper) {
  return paper ? -t * (y < margin ? y : margin) : -t * y;
}

// d(term)/dy: -t where the clip is inactive, 0 where y >= m (paper); -t everywhere (reference).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t margin_loss_grad(acc_t y, acc_t t, acc_t margin, bool paper) {
  return (paper && !(y < margin)) ? acc_t(0) : -t;
}

}  // namespace rib_ext
