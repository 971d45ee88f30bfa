// Pillow's bicubic resize of uint8 images, CPU: the two passes of csrc/resize.h, rows in parallel.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>  // at::internal::GRAIN_SIZE
#include <torch/library.h>

#include <vector>

#include "../host_prep.h"
#include "../resize.h"

namespace rib_ext {
namespace cpu {

namespace {

using resize::Axis;

// Every output index's window along one axis: weights [out, ksize], first input index, length.
struct Windows {
  int ksize;
  std::vector<int32_t> k;
  std::vector<int32_t> first;
  std::vector<int32_t> len;
};

Windows windows(const Axis& a) {
  Windows w{a.ksize, std::vector<int32_t>(static_cast<size_t>(a.out_size) * a.ksize),
            std::vector<int32_t>(a.out_size), std::vector<int32_t>(a.out_size)};
  for (int i = 0; i < a.out_size; ++i) {
    w.len[i] = resize::window(a, i, w.k.data() + static_cast<size_t>(i) * a.ksize, &w.first[i]);
  }
  return w;
}

// Rows per parallel chunk so that a chunk is worth a thread (about GRAIN_SIZE multiply-adds).
int64_t row_grain(int64_t work_per_row) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, work_per_row));
}

// [rows, in_w, C] -> [rows, out_w, C]; C fixed at compile time so the accumulators stay in registers.
template <int C>
void horizontal(const uint8_t* in, int64_t rows, int64_t in_w, const Windows& w, int64_t out_w,
                uint8_t* out) {
  at::parallel_for(0, rows, row_grain(out_w * w.ksize * C), [&](int64_t begin, int64_t end) {
    for (int64_t y = begin; y < end; ++y) {
      const uint8_t* src = in + y * in_w * C;
      uint8_t* dst = out + y * out_w * C;
      for (int64_t i = 0; i < out_w; ++i) {
        const int32_t* k = w.k.data() + i * w.ksize;
        const uint8_t* p = src + static_cast<int64_t>(w.first[i]) * C;
        int32_t acc[C];
        for (int c = 0; c < C; ++c) acc[c] = resize::kRoundHalf;
        for (int32_t x = 0; x < w.len[i]; ++x) {
          for (int c = 0; c < C; ++c) acc[c] += static_cast<int32_t>(p[x * C + c]) * k[x];
        }
        for (int c = 0; c < C; ++c) dst[i * C + c] = resize::clip8(acc[c]);
      }
    }
  });
}

// [in_h, row] -> [out_h, row] (row = width * C bytes). A whole output row accumulates at once, tap
// by tap: the inner loop runs along memory and vectorises; integer sums do not depend on order.
void vertical(const uint8_t* in, int64_t row, const Windows& w, int64_t out_h, uint8_t* out) {
  at::parallel_for(0, out_h, row_grain(row * w.ksize), [&](int64_t begin, int64_t end) {
    std::vector<int32_t> acc(row);
    for (int64_t i = begin; i < end; ++i) {
      std::fill(acc.begin(), acc.end(), resize::kRoundHalf);
      const int32_t* k = w.k.data() + i * w.ksize;
      for (int32_t y = 0; y < w.len[i]; ++y) {
        const uint8_t* src = in + (w.first[i] + static_cast<int64_t>(y)) * row;
        const int32_t ky = k[y];
        for (int64_t j = 0; j < row; ++j) acc[j] += static_cast<int32_t>(src[j]) * ky;
      }
      uint8_t* dst = out + i * row;
      for (int64_t j = 0; j < row; ++j) dst[j] = resize::clip8(acc[j]);
    }
  });
}

void horizontal_any(const uint8_t* in, int64_t rows, int64_t in_w, int64_t channels,
                    const Windows& w, int64_t out_w, uint8_t* out) {
  switch (channels) {
    case 1: return horizontal<1>(in, rows, in_w, w, out_w, out);
    case 2: return horizontal<2>(in, rows, in_w, w, out_w, out);
    case 3: return horizontal<3>(in, rows, in_w, w, out_w, out);
    default: return horizontal<4>(in, rows, in_w, w, out_w, out);
  }
}

}  // namespace

at::Tensor resize_bicubic_u8_cpu(const at::Tensor& image, int64_t height, int64_t width,
                                 bool adaptive_order) {
  auto [in, out] = prepare_resize_bicubic_u8(image, height, width);
  const int64_t H = in.size(0), W = in.size(1), C = in.size(2);
  const bool need_horizontal = width != W, need_vertical = height != H;
  if (!need_horizontal && !need_vertical) return out.copy_(in);
  const uint8_t* src = in.const_data_ptr<uint8_t>();
  if (!need_horizontal || !need_vertical) {
    if (need_horizontal) {
      horizontal_any(src, H, W, C, windows(resize::make_axis(W, width)), width,
                     out.mutable_data_ptr<uint8_t>());
    } else {
      vertical(src, W * C, windows(resize::make_axis(H, height)), height,
               out.mutable_data_ptr<uint8_t>());
    }
    return out;
  }
  const auto wx = windows(resize::make_axis(W, width));
  const auto wy = windows(resize::make_axis(H, height));
  if (resize::vertical_first(H, W, height, width, adaptive_order)) {
    auto mid = at::empty({height, W, C}, out.options());
    vertical(src, W * C, wy, height, mid.mutable_data_ptr<uint8_t>());
    horizontal_any(mid.const_data_ptr<uint8_t>(), height, W, C, wx, width,
                   out.mutable_data_ptr<uint8_t>());
  } else {
    auto mid = at::empty({H, width, C}, out.options());
    horizontal_any(src, H, W, C, wx, width, mid.mutable_data_ptr<uint8_t>());
    vertical(mid.const_data_ptr<uint8_t>(), width * C, wy, height, out.mutable_data_ptr<uint8_t>());
  }
  return out;
}

TORCH_LIBRARY_IMPL(rib_ext, CPU, m) {
  m.impl("resize_bicubic_u8", &resize_bicubic_u8_cpu);
}

}  // namespace cpu
}  // namespace rib_ext
