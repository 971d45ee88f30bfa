// Pillow's bicubic resize of uint8 images, CUDA kernels: the windows of both axes computed on the
// device (no host work, no copy), then one thread per output pixel (horizontal pass) and per output
// byte (vertical pass). Arithmetic and pass order: csrc/resize.h; the op: resize_host.cpp.
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "launch.h"

namespace rib_ext {
namespace cuda {

namespace {

using resize::Axis;

constexpr int kThreads = 256;

// Where one axis' windows live in the int32 scratch buffer: weights [out, ksize], first, length.
struct WindowTable {
  int32_t* k;
  int32_t* first;
  int32_t* len;
  int ksize;
};

// The table of `a` at `base` (launch.h: resize_table_size values).
WindowTable table_at(const int32_t* base, const Axis& a) {
  int32_t* b = const_cast<int32_t*>(base);  // the kernels that only read it take it as written
  return {b, b + static_cast<int64_t>(a.out_size) * a.ksize,
          b + static_cast<int64_t>(a.out_size) * (a.ksize + 1), a.ksize};
}

// Thread t < first_axis.out_size computes window t of the first axis, the next ones the second's.
__global__ void windows_kernel(Axis a0, WindowTable t0, Axis a1, WindowTable t1, int total) {
  for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
    const bool first_axis = t < a0.out_size;
    const Axis& a = first_axis ? a0 : a1;
    const WindowTable& w = first_axis ? t0 : t1;
    const int i = first_axis ? t : t - a0.out_size;
    w.len[i] = resize::window(a, i, w.k + static_cast<int64_t>(i) * w.ksize, &w.first[i]);
  }
}

// [rows, in_w, C] -> [rows, out_w, C], one thread per output pixel (all its channels).
template <int C>
__global__ void horizontal_kernel(const uint8_t* __restrict__ in, int64_t in_w, int64_t out_w,
                                  int64_t total, WindowTable w, uint8_t* __restrict__ out) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t y = e / out_w, i = e - y * out_w;
    const uint8_t* p = in + (y * in_w + w.first[i]) * C;
    const int32_t* k = w.k + i * w.ksize;
    int32_t acc[C];
#pragma unroll
    for (int c = 0; c < C; ++c) acc[c] = resize::kRoundHalf;
    const int32_t n = w.len[i];
    for (int32_t x = 0; x < n; ++x) {
      const int32_t kx = k[x];
#pragma unroll
      for (int c = 0; c < C; ++c) acc[c] += static_cast<int32_t>(p[x * C + c]) * kx;
    }
#pragma unroll
    for (int c = 0; c < C; ++c) out[e * C + c] = resize::clip8(acc[c]);
  }
}

// [in_h, row] -> [out_h, row] (row = width * C bytes), one thread per output byte: neighbouring
// threads read neighbouring bytes of the same source rows.
__global__ void vertical_kernel(const uint8_t* __restrict__ in, int64_t row, int64_t total,
                                WindowTable w, uint8_t* __restrict__ out) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / row, j = e - i * row;
    const uint8_t* src = in + static_cast<int64_t>(w.first[i]) * row + j;
    const int32_t* k = w.k + i * w.ksize;
    int32_t acc = resize::kRoundHalf;
    const int32_t n = w.len[i];
    for (int32_t y = 0; y < n; ++y) acc += static_cast<int32_t>(src[y * row]) * k[y];
    out[e] = resize::clip8(acc);
  }
}

int64_t blocks_for(int64_t total) {
  return std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, 65535 * 8));
}

}  // namespace

void launch_resize_windows(const Axis& ax, const Axis& ay, int32_t* table, cudaStream_t stream) {
  const int n_windows = ax.out_size + ay.out_size;
  windows_kernel<<<blocks_for(n_windows), kThreads, 0, stream>>>(
      ax, table_at(table, ax), ay, table_at(table + resize_table_size(ax), ay), n_windows);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_resize_horizontal(const uint8_t* in, int64_t rows, int64_t in_w, int64_t channels,
                              const Axis& ax, const int32_t* table, uint8_t* out,
                              cudaStream_t stream) {
  const int64_t out_w = ax.out_size;
  const WindowTable w = table_at(table, ax);
  const int64_t total = rows * out_w;
  const int64_t blocks = blocks_for(total);
  switch (channels) {
    case 1: horizontal_kernel<1><<<blocks, kThreads, 0, stream>>>(in, in_w, out_w, total, w, out); break;
    case 2: horizontal_kernel<2><<<blocks, kThreads, 0, stream>>>(in, in_w, out_w, total, w, out); break;
    case 3: horizontal_kernel<3><<<blocks, kThreads, 0, stream>>>(in, in_w, out_w, total, w, out); break;
    default: horizontal_kernel<4><<<blocks, kThreads, 0, stream>>>(in, in_w, out_w, total, w, out); break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_resize_vertical(const uint8_t* in, int64_t row, const Axis& ay, const int32_t* table,
                            uint8_t* out, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(ay.out_size) * row;
  vertical_kernel<<<blocks_for(total), kThreads, 0, stream>>>(in, row, total, table_at(table, ay),
                                                               out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace rib_ext
