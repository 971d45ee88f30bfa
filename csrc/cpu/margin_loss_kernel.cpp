// The RIB clipped-margin loss, elementwise, CPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "../gndrp.h"

namespace rib_ext {
namespace cpu {

at::Tensor margin_loss_cpu(const at::Tensor& logits, const at::Tensor& labels, double margin,
                           bool paper) {
  check_same_shape(logits, labels, "logits", "labels", "margin_loss");
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), "margin_loss: logits must be floating point");
  const auto y = logits.contiguous();
  const auto t = labels.to(logits.scalar_type()).contiguous();
  auto out = at::empty(y.sizes(), y.options());
  const int64_t n = y.numel();
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "margin_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const scalar_t* tp = t.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, 32768, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        op[i] = static_cast<scalar_t>(margin_loss_term<acc_t>(
            yp[i], tp[i], static_cast<acc_t>(margin), paper));
      }
    });
  });
  return out;
}

at::Tensor margin_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& logits,
                                    const at::Tensor& labels, double margin, bool paper) {
  check_same_shape(logits, labels, "logits", "labels", "_margin_loss_backward");
  check_same_shape(logits, grad, "logits", "grad", "_margin_loss_backward");
  const auto y = logits.contiguous();
  const auto t = labels.to(logits.scalar_type()).contiguous();
  const auto g = grad.to(logits.scalar_type()).contiguous();
  auto out = at::empty(y.sizes(), y.options());
  const int64_t n = y.numel();
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "margin_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const scalar_t* tp = t.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, 32768, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        op[i] = static_cast<scalar_t>(static_cast<acc_t>(gp[i]) *
                                      margin_loss_grad<acc_t>(yp[i], tp[i],
                                                              static_cast<acc_t>(margin), paper));
      }
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(rib_ext, CPU, m) {
  m.impl("margin_loss", &margin_loss_cpu);
  m.impl("_margin_loss_backward", &margin_loss_backward_cpu);
}

}  // namespace cpu
}  // namespace rib_ext
