// The RIB clipped-margin loss, elementwise, CPU.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../host_prep.h"
#include "../margin_loss.h"

namespace rib_ext {
namespace cpu {

at::Tensor margin_loss_cpu(const at::Tensor& logits, const at::Tensor& labels, double margin,
                           c10::string_view behaviour) {
  const bool paper = is_paper_behaviour(behaviour, "margin_loss");
  const auto a = prepare_margin_loss(logits, labels);
  const int64_t n = a.out.numel();
  if (n == 0) return a.out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "margin_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* yp = a.logits.const_data_ptr<scalar_t>();
    const scalar_t* tp = a.labels.const_data_ptr<scalar_t>();
    scalar_t* op = a.out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, 32768, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        op[i] = static_cast<scalar_t>(margin_loss_term<acc_t>(
            yp[i], tp[i], static_cast<acc_t>(margin), paper));
      }
    });
  });
  return a.out;
}

at::Tensor margin_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& logits,
                                    const at::Tensor& labels, double margin,
                                    c10::string_view behaviour) {
  const bool paper = is_paper_behaviour(behaviour, "_margin_loss_backward");
  const auto a = prepare_margin_loss_backward(grad, logits, labels);
  const int64_t n = a.out.numel();
  if (n == 0) return a.out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "margin_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* yp = a.logits.const_data_ptr<scalar_t>();
    const scalar_t* tp = a.labels.const_data_ptr<scalar_t>();
    const scalar_t* gp = a.grad.const_data_ptr<scalar_t>();
    scalar_t* op = a.out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, 32768, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        op[i] = static_cast<scalar_t>(static_cast<acc_t>(gp[i]) *
                                      margin_loss_grad<acc_t>(yp[i], tp[i],
                                                              static_cast<acc_t>(margin), paper));
      }
    });
  });
  return a.out;
}

TORCH_LIBRARY_IMPL(rib_ext, CPU, m) {
  m.impl("margin_loss", &margin_loss_cpu);
  m.impl("_margin_loss_backward", &margin_loss_backward_cpu);
}

}  // namespace cpu
}  // namespace rib_ext
