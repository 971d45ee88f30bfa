// GNDRP masked pooling and its fused form with the RIB margin loss.
//
// cam      [N, K, H, W]  raw (pre-ReLU) class activation maps; float32/float64 on CPU,
//                        float32/float16/bfloat16 on CUDA (accumulation in float32 or wider)
// present  [N, K] bool   the row's label: true where class k is in row n's image
// labels   [N, K]        same dtype as cam's accumulation type is not required; read as float
// tau                    threshold on the max-normalised map
// behaviour              "authors": the authors' released code; "paper": the paper's equation
//                        (the kernels take it as the bool paper: behaviour == "paper")
//
// For every plane (n, k):
//   M = max_u cam[n,k,u]                                   (treated as a constant: no gradient)
//   kept(u) = true                          if !present[n,k]
//           = cam[n,k,u] / M <  tau         (authors; no guard on M, see below)
//           = true                          (paper, M <= 0)
//           = cam[n,k,u] / M <= tau         (paper, M > 0)
//   pooled[n,k] = sum_{kept} cam[n,k,u] * scale[n,k]
//   scale = 1 / (H*W)                       (authors)
//         = 1 / #kept, or 0 if #kept == 0   (paper)
//
// A present class whose map is never positive (it happens on other images whose crop cut their
// object out). The authors' behaviour divides by M without a guard, exactly as the authors' code does, in
// IEEE arithmetic: M < 0 makes every ratio >= 1, so nothing is kept (logit 0, no gradient) for
// tau <= 1; M == 0 turns negative locations into -inf (kept) and zeros into NaN (dropped: a
// comparison with NaN is false), so the logit is the plain mean but the zero locations get no
// gradient; an all-zero plane keeps nothing. The paper behaviour (not the authors' code) guards: with no
// positive evidence no location is "discriminative", so every location is pooled (average pooling)
// and no NaN or division by zero appears.
//
// Every op returns (pooled-or-logits, plane_max, scale) so that backward is one pass over cam.
#pragma once

#include <c10/macros/Macros.h>

#include "margin_loss.h"

namespace rib_ext {

template <typename acc_t>
C10_HOST_DEVICE inline bool gndrp_kept(acc_t v, acc_t plane_max, bool present, acc_t tau,
                                       bool paper) {
  if (!present || (paper && !(plane_max > acc_t(0)))) return true;
  // Divide (not v < tau*M): the authors' arithmetic, NaN and infinities included (see above).
  const acc_t r = v / plane_max;
  return paper ? (r <= tau) : (r < tau);
}

}  // namespace rib_ext
