// The launchers of the CUDA kernels, as the host files (csrc/cuda/*_host.cpp) call them: plain
// pointers, sizes, the dtype and the stream. No at::Tensor crosses this line, so the .cu files do
// not include ATen's tensor headers, which nvcc would otherwise parse once for the host and again
// for every target architecture (a third of the build time per architecture).
//
// Pointers to values of the dtype are `scalar` (cam's or the logits' dtype); pointers to values of
// its accumulation type (at::opmath_type: float for half and bfloat16) are `acc`.
#pragma once

#include <c10/core/ScalarType.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "../resize.h"

namespace rib_ext {
namespace cuda {

// ---- cam_maps_kernel.cu ----
// out (acc) [= out +] relu(a) + relu(b mirrored along the last axis of width W); total = a.numel().
void launch_flip_merge(c10::ScalarType dtype, const void* a, const void* b, int64_t W, int64_t total,
                       bool accumulate, void* out, cudaStream_t stream);
// out[plane] = x[plane] / (max(x[plane]) + eps) for `planes` planes of hw values.
void launch_max_normalize(c10::ScalarType dtype, const void* x, int64_t planes, int64_t hw,
                          double eps, void* out, cudaStream_t stream);

// ---- gndrp_pool_kernel.cu ----
// present: bool [planes]; pooled (scalar), plane_max and scale (acc): [planes].
void launch_gndrp_pool(c10::ScalarType dtype, const void* cam, const bool* present, int64_t planes,
                       int64_t hw, double tau, bool paper, void* pooled, void* plane_max,
                       void* scale, cudaStream_t stream);
// grad, plane_max, scale (acc) [planes]; out (scalar) cam's shape.
void launch_gndrp_pool_backward(c10::ScalarType dtype, const void* cam, int64_t planes, int64_t hw,
                                const void* grad, const bool* present, const void* plane_max,
                                const void* scale, double tau, bool paper, void* out,
                                cudaStream_t stream);

// ---- gndrp_margin_loss_kernel.cu ----
// labels (acc) [planes]; logits (scalar), plane_max, scale, terms (acc) [planes].
void launch_gndrp_margin_loss(c10::ScalarType dtype, const void* cam, const void* labels,
                              int64_t planes, int64_t hw, double tau, double margin, bool paper,
                              void* logits, void* plane_max, void* scale, void* terms,
                              cudaStream_t stream);
// grad_loss (acc, one value on the device), labels, logits, plane_max, scale (acc) [planes].
void launch_gndrp_margin_loss_backward(c10::ScalarType dtype, const void* cam, int64_t planes,
                                       int64_t hw, const void* grad_loss, const void* labels,
                                       const void* logits, const void* plane_max,
                                       const void* scale, double tau, double margin, bool paper,
                                       void* out, cudaStream_t stream);

// ---- margin_loss_kernel.cu ----
// y, t, out (scalar) [n]; grad (scalar) [n] for the backward, nullptr for the forward.
void launch_margin_loss(c10::ScalarType dtype, const void* y, const void* t, const void* grad,
                        int64_t n, double margin, bool paper, void* out, cudaStream_t stream);

// ---- resize_kernel.cu ----
// int32 values one axis' window table takes: weights [out, ksize], first [out], length [out].
inline int64_t resize_table_size(const resize::Axis& a) {
  return static_cast<int64_t>(a.out_size) * (a.ksize + 2);
}
// Both axes' tables: x's at `table`, y's right after it (an axis with out_size 0 gets none).
void launch_resize_windows(const resize::Axis& ax, const resize::Axis& ay, int32_t* table,
                           cudaStream_t stream);
// [rows, in_w, channels] -> [rows, ax.out_size, channels] with x's table.
void launch_resize_horizontal(const uint8_t* in, int64_t rows, int64_t in_w, int64_t channels,
                              const resize::Axis& ax, const int32_t* table, uint8_t* out,
                              cudaStream_t stream);
// [in_h, row] -> [ay.out_size, row] (row = width * channels bytes) with y's table.
void launch_resize_vertical(const uint8_t* in, int64_t row, const resize::Axis& ay,
                            const int32_t* table, uint8_t* out, cudaStream_t stream);

// ---- sgd_step_kernel.cu ----
// params, bufs (in place), grads (scalar) [slots, n]; lrs (scalar) [slots, 2]; go, first [slots].
void launch_sgd_step(c10::ScalarType dtype, void* params, void* bufs, const void* grads,
                     const void* lrs, const bool* go, const bool* first, int64_t slots, int64_t n,
                     int64_t split, double weight_decay, double momentum, cudaStream_t stream);

}  // namespace cuda
}  // namespace rib_ext
