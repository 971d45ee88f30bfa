// Pillow's bicubic resize of uint8 images, bit for bit (Image.resize(size, Image.BICUBIC)).
//
// resize_bicubic_u8(image, height, width, adaptive_order) -> out
//   image  [H, W, C] uint8, C in 1..4 (channels last: the layout of a decoded image, of a numpy
//          array handed to Image.fromarray, and of rib_ext's image cache); any strides
//   out    [height, width, C] uint8, contiguous, on image's device
//   Sides (H, W, height, width) are in 1..2^24 (Pillow keeps the source box in float).
//
// The arithmetic is Pillow's ImagingResample (libImaging/Resample.c, Pillow >= 4), reimplemented:
//   - Per axis, scale = in / out, filterscale = max(scale, 1), support = 2 * filterscale (the
//     bicubic kernel, a = -0.5, widened when downscaling), ksize = 2 * ceil(support) + 1.
//   - Output index i covers input [xmin, xmax): center = (i + 0.5) * scale,
//     xmin = max(0, trunc(center - support + 0.5)), xmax = min(in, trunc(center + support + 0.5));
//     weight of input x: bicubic((x - center + 0.5) / filterscale), the window's weights divided by
//     their sum, then fixed point: trunc(w * 2^22 +- 0.5) (PRECISION_BITS = 32 - 8 - 2 = 22).
//   - Each pass: acc = 2^21 + sum pixel * weight (int32), out = clamp(acc >> 22, 0, 255).
//   - Two passes through a uint8 intermediate (clipped), a pass whose size does not change skipped
//     (both skipped: a copy). Their order changed in Pillow 13 (python-pillow/Pillow#9549), and
//     the bytes with it: before, always horizontal then vertical; from 13 on, vertical first when
//     the height shrinks (out_h <= in_h) by more than twice as many pixels as the width
//     (in_h - out_h > 2 * (in_w - out_w)). `adaptive_order` picks 13's rule (true) or the old one.
//     (Pillow runs a horizontal-first pass only on the rows the vertical one reads; for bicubic over
//     the whole image those are all rows.)
// The weights are computed in double with every operation rounded on its own, never fused into an
// FMA (as Pillow's x86-64 builds compute them): a fused one would move some weights by one unit,
// hence rounding.h's operations.
#pragma once

#include <c10/macros/Macros.h>

#include "rounding.h"

#include <cmath>
#include <cstdint>

namespace rib_ext {
namespace resize {

constexpr int kPrecisionBits = 32 - 8 - 2;
constexpr int32_t kRoundHalf = 1 << (kPrecisionBits - 1);
constexpr double kBicubicSupport = 2.0;
constexpr int64_t kMaxSide = int64_t(1) << 24;
constexpr int kMaxChannels = 4;

using rn::add;
using rn::div;
using rn::mul;
using rn::sub;

// Keys' cubic convolution kernel with a = -0.5, in Pillow's order of operations.
C10_HOST_DEVICE inline double bicubic(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return add(mul(mul(sub(mul(1.5, x), 2.5), x), x), 1.0);          // ((a+2)x-(a+3))x x+1
  if (x < 2.0) return mul(sub(mul(add(mul(sub(x, 5.0), x), 8.0), x), 4.0), -0.5);  // (((x-5)x+8)x-4)a
  return 0.0;
}

// One axis of the resize: in_size -> out_size.
struct Axis {
  int in_size;
  int out_size;
  int ksize;  // weights stored per output index (the longest possible window)
  double scale;
  double filterscale;
  double support;
};

inline Axis make_axis(int64_t in_size, int64_t out_size) {
  Axis a;
  a.in_size = static_cast<int>(in_size);
  a.out_size = static_cast<int>(out_size);
  // Pillow's box edges are floats: (double)(float(in) - 0.f) / out.
  a.scale = static_cast<double>(static_cast<float>(in_size)) / static_cast<double>(out_size);
  a.filterscale = a.scale < 1.0 ? 1.0 : a.scale;
  a.support = kBicubicSupport * a.filterscale;
  a.ksize = static_cast<int>(std::ceil(a.support)) * 2 + 1;
  return a;
}

C10_HOST_DEVICE inline double tap_weight(int x, double center, double inv_filterscale) {
  return bicubic(mul(add(sub(static_cast<double>(x), center), 0.5), inv_filterscale));
}

// The window of output index i: writes its first input index to *first and its fixed-point
// weights to k[0, ksize) (zeros past the window); returns the window's length. The raw weights are
// evaluated twice (for the sum, then to normalise) rather than stored: the same operations give
// the same doubles, and no scratch array of ksize doubles is needed on the device.
C10_HOST_DEVICE inline int window(const Axis& a, int i, int32_t* k, int32_t* first) {
  const double center = mul(static_cast<double>(i) + 0.5, a.scale);
  const double inv = div(1.0, a.filterscale);
  int xmin = static_cast<int>(add(sub(center, a.support), 0.5));
  if (xmin < 0) xmin = 0;
  int xmax = static_cast<int>(add(add(center, a.support), 0.5));
  if (xmax > a.in_size) xmax = a.in_size;
  const int n = xmax - xmin;
  double sum = 0.0;
  for (int x = 0; x < n; ++x) sum = add(sum, tap_weight(x + xmin, center, inv));
  for (int x = 0; x < n; ++x) {
    double w = tap_weight(x + xmin, center, inv);
    if (sum != 0.0) w = div(w, sum);
    const double fixed = mul(w, static_cast<double>(1 << kPrecisionBits));
    k[x] = static_cast<int32_t>(w < 0 ? add(-0.5, fixed) : add(0.5, fixed));
  }
  for (int x = n; x < a.ksize; ++x) k[x] = 0;
  *first = xmin;
  return n;
}

// Whether the vertical pass runs first (only asked when both passes are needed).
inline bool vertical_first(int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,
                           bool adaptive_order) {
  return adaptive_order && out_h <= in_h && (in_h - out_h) > 2 * (in_w - out_w);
}

// Pillow's clip8: the rounded fixed-point sum back to a byte.
C10_HOST_DEVICE inline uint8_t clip8(int32_t acc) {
  const int32_t v = acc >> kPrecisionBits;  // arithmetic shift: floor
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

}  // namespace resize
}  // namespace rib_ext
