// Pillow's bicubic resize of uint8 images, CUDA: the windows of both axes computed on the device
// (no host work, no copy), then one thread per output pixel (horizontal pass) and per output byte
// (vertical pass). Arithmetic and pass order: csrc/resize.h.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../host_prep.h"
#include "../resize.h"

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

int64_t table_size(const Axis& a) { return static_cast<int64_t>(a.out_size) * (a.ksize + 2); }

WindowTable table_at(int32_t* base, const Axis& a) {
  return {base, base + static_cast<int64_t>(a.out_size) * a.ksize,
          base + static_cast<int64_t>(a.out_size) * (a.ksize + 1), a.ksize};
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

void launch_horizontal(const uint8_t* in, int64_t rows, int64_t in_w, int64_t channels,
                       int64_t out_w, const WindowTable& w, uint8_t* out, cudaStream_t stream) {
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

void launch_vertical(const uint8_t* in, int64_t row, int64_t out_h, const WindowTable& w,
                     uint8_t* out, cudaStream_t stream) {
  const int64_t total = out_h * row;
  vertical_kernel<<<blocks_for(total), kThreads, 0, stream>>>(in, row, total, w, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor resize_bicubic_u8_cuda(const at::Tensor& image, int64_t height, int64_t width,
                                  bool adaptive_order) {
  const at::cuda::OptionalCUDAGuard guard(image.device());
  auto [in, out] = prepare_resize_bicubic_u8(image, height, width);
  const int64_t H = in.size(0), W = in.size(1), C = in.size(2);
  const bool need_horizontal = width != W, need_vertical = height != H;
  if (!need_horizontal && !need_vertical) return out.copy_(in);
  const auto stream = at::cuda::getCurrentCUDAStream();

  // Both axes' windows in one scratch buffer and one launch (an unneeded axis gets no entries).
  Axis ax = resize::make_axis(W, width), ay = resize::make_axis(H, height);
  if (!need_horizontal) ax.out_size = 0;
  if (!need_vertical) ay.out_size = 0;
  const int64_t nx = table_size(ax), ny = table_size(ay);
  auto scratch = at::empty({nx + ny}, in.options().dtype(at::kInt));
  const WindowTable tx = table_at(scratch.mutable_data_ptr<int32_t>(), ax);
  const WindowTable ty = table_at(scratch.mutable_data_ptr<int32_t>() + nx, ay);
  const int n_windows = ax.out_size + ay.out_size;
  windows_kernel<<<blocks_for(n_windows), kThreads, 0, stream>>>(ax, tx, ay, ty, n_windows);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const uint8_t* src = in.const_data_ptr<uint8_t>();
  uint8_t* dst = out.mutable_data_ptr<uint8_t>();
  if (!need_horizontal || !need_vertical) {
    if (need_horizontal) {
      launch_horizontal(src, H, W, C, width, tx, dst, stream);
    } else {
      launch_vertical(src, W * C, height, ty, dst, stream);
    }
  } else if (resize::vertical_first(H, W, height, width, adaptive_order)) {
    auto mid = at::empty({height, W, C}, out.options());
    launch_vertical(src, W * C, height, ty, mid.mutable_data_ptr<uint8_t>(), stream);
    launch_horizontal(mid.const_data_ptr<uint8_t>(), height, W, C, width, tx, dst, stream);
  } else {
    auto mid = at::empty({H, width, C}, out.options());
    launch_horizontal(src, H, W, C, width, tx, mid.mutable_data_ptr<uint8_t>(), stream);
    launch_vertical(mid.const_data_ptr<uint8_t>(), width * C, height, ty, dst, stream);
  }
  return out;
}

TORCH_LIBRARY_IMPL(rib_ext, CUDA, m) {
  m.impl("resize_bicubic_u8", &resize_bicubic_u8_cuda);
}

}  // namespace cuda
}  // namespace rib_ext
