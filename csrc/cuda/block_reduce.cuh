// Block-wide reductions for the one-block-per-plane kernels (blockDim.x a multiple of 32, <= 1024).
#pragma once

#include <cuda_runtime.h>

namespace rib_ext {
namespace cuda {

constexpr int kWarp = 32;

template <typename T>
__device__ inline T warp_sum(T v) {
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffff, v, o);
  return v;
}

template <typename T>
__device__ inline T warp_max(T v) {
  for (int o = kWarp / 2; o > 0; o >>= 1) {
    const T w = __shfl_down_sync(0xffffffff, v, o);
    v = w > v ? w : v;
  }
  return v;
}

// Every thread receives the block's result. `shared` holds kWarp values.
template <typename T, bool kMax>
__device__ inline T block_reduce(T v, T* shared) {
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  v = kMax ? warp_max(v) : warp_sum(v);
  __syncthreads();  // shared may still be read by a previous reduction
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + kWarp - 1) / kWarp;
  if (warp == 0) {
    v = lane < warps ? shared[lane] : shared[0];
    if (!kMax && lane >= warps) v = T(0);
    v = kMax ? warp_max(v) : warp_sum(v);
    if (lane == 0) shared[0] = v;
  }
  __syncthreads();
  return shared[0];
}

}  // namespace cuda
}  // namespace rib_ext
