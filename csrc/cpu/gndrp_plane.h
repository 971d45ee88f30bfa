// Per-plane GNDRP statistics on the CPU, shared by gndrp_pool and the fused gndrp_margin_loss.
#pragma once

#include <cstdint>
#include <algorithm>
#include <limits>

#include "../gndrp.h"

namespace rib_ext {
namespace cpu {

// Planes are small (a few thousand values): give each thread enough of them to pay for the fork.
inline int64_t plane_grain(int64_t hw) { return 16384 / (hw > 0 ? hw : 1) + 1; }

template <typename scalar_t, typename acc_t>
struct PlaneStats {
  acc_t pooled;
  acc_t plane_max;
  acc_t scale;
};

// Two passes over one contiguous plane: its max, then the masked sum (the plane is small, so the
// second pass reads from cache). Float reductions only vectorise when reassociation is allowed:
// `omp simd reduction` allows it for these loops alone (deterministic for a given build).
template <typename scalar_t, typename acc_t>
inline PlaneStats<scalar_t, acc_t> gndrp_plane(const scalar_t* x, int64_t hw, bool present,
                                               acc_t tau, bool paper) {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t u = 0; u < hw; ++u) m = std::max(m, static_cast<acc_t>(x[u]));

  // Hoisted out of the loop: whether the plane is normalised at all (gndrp.h: the authors'
  // behaviour divides by a non-positive max too, as their code does).
  const bool normalise = present && (!paper || m > acc_t(0));
  acc_t sum = 0;
  acc_t count = 0;  // exact in float up to 2^24 locations
#pragma omp simd reduction(+ : sum, count)
  for (int64_t u = 0; u < hw; ++u) {
    const acc_t v = static_cast<acc_t>(x[u]);
    const acc_t r = v / m;
    // Arithmetic masking (k * v) rather than a branch, so the loop if-converts to SIMD.
    const acc_t k = static_cast<acc_t>(!normalise || (paper ? r <= tau : r < tau));
    sum += k * v;
    count += k;
  }
  acc_t scale;
  if (paper) {
    scale = count > acc_t(0) ? acc_t(1) / count : acc_t(0);
  } else {
    scale = acc_t(1) / static_cast<acc_t>(hw);
  }
  return {sum * scale, m, scale};
}

// grad_cam over one plane: w * kept(u).
template <typename scalar_t, typename acc_t>
inline void gndrp_plane_backward(const scalar_t* x, scalar_t* g, int64_t hw, bool present,
                                 acc_t plane_max, acc_t tau, bool paper, acc_t w) {
  for (int64_t u = 0; u < hw; ++u) {
    const acc_t v = static_cast<acc_t>(x[u]);
    g[u] = static_cast<scalar_t>(gndrp_kept<acc_t>(v, plane_max, present, tau, paper) ? w
                                                                                       : acc_t(0));
  }
}

}  // namespace cpu
}  // namespace rib_ext
