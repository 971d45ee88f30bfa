// One block per (n, k) plane: its max, then the masked sum and count. Shared by gndrp_pool and the
// fused gndrp_margin_loss so both compute bit-identical logits.
#pragma once

#include <cstdint>

#include "../gndrp.h"
#include "block_reduce.cuh"

namespace rib_ext {
namespace cuda {

constexpr int kPlaneThreads = 256;

template <typename acc_t>
struct PlaneResult {
  acc_t pooled;
  acc_t plane_max;
  acc_t scale;
};

template <typename scalar_t, typename acc_t>
__device__ inline PlaneResult<acc_t> gndrp_plane(const scalar_t* __restrict__ x, int64_t hw,
                                                 bool present, acc_t tau, bool paper) {
  __shared__ acc_t shared[kWarp];
  acc_t m = -INFINITY;
  for (int64_t u = threadIdx.x; u < hw; u += blockDim.x) {
    const acc_t v = static_cast<acc_t>(x[u]);
    m = v > m ? v : m;
  }
  m = block_reduce<acc_t, true>(m, shared);
  acc_t sum = 0;
  acc_t count = 0;  // exact in float up to 2^24 locations
  for (int64_t u = threadIdx.x; u < hw; u += blockDim.x) {
    const acc_t v = static_cast<acc_t>(x[u]);
    if (gndrp_kept<acc_t>(v, m, present, tau, paper)) {
      sum += v;
      count += acc_t(1);
    }
  }
  sum = block_reduce<acc_t, false>(sum, shared);
  if (paper) count = block_reduce<acc_t, false>(count, shared);
  const acc_t scale =
      paper ? (count > acc_t(0) ? acc_t(1) / count : acc_t(0)) : acc_t(1) / static_cast<acc_t>(hw);
  return {sum * scale, m, scale};
}

}  // namespace cuda
}  // namespace rib_ext
