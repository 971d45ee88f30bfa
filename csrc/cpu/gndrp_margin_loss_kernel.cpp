// Fused GNDRP pooling + RIB margin loss, CPU. Forward: one pass per plane (max, masked sum) plus
// the loss term; backward: one pass writing grad_cam = g * dloss/dy * scale * kept.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../host_prep.h"
#include "gndrp_plane.h"

namespace rib_ext {
namespace cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gndrp_margin_loss_cpu(
    const at::Tensor& cam, const at::Tensor& labels, double tau, double margin,
    c10::string_view behaviour) {
  const bool paper = is_paper_behaviour(behaviour, "gndrp_margin_loss");
  const auto a = prepare_gndrp_margin_loss(cam, labels, tau);
  const int64_t planes = a.cam.count;
  const int64_t hw = a.cam.hw;
  if (planes == 0) return a.tuple();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cam.scalar_type(), "gndrp_margin_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = a.cam.x.const_data_ptr<scalar_t>();
    const acc_t* tp = a.labels.const_data_ptr<acc_t>();
    scalar_t* yp = a.out.pooled.mutable_data_ptr<scalar_t>();
    acc_t* maxp = a.out.plane_max.mutable_data_ptr<acc_t>();
    acc_t* scalep = a.out.scale.mutable_data_ptr<acc_t>();
    acc_t* termp = a.terms.mutable_data_ptr<acc_t>();
    at::parallel_for(0, planes, plane_grain(hw), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const auto s = gndrp_plane<scalar_t, acc_t>(xp + i * hw, hw, tp[i] > acc_t(0),
                                                    static_cast<acc_t>(tau), paper);
        // The loss sees the logit as stored (rounded to cam's dtype), as an unfused chain would.
        const scalar_t y = static_cast<scalar_t>(s.pooled);
        yp[i] = y;
        maxp[i] = s.plane_max;
        scalep[i] = s.scale;
        termp[i] = margin_loss_term<acc_t>(static_cast<acc_t>(y), tp[i],
                                           static_cast<acc_t>(margin), paper);
      }
    });
  });
  return a.tuple();
}

at::Tensor gndrp_margin_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& cam,
                                          const at::Tensor& labels, const at::Tensor& logits,
                                          const at::Tensor& plane_max, const at::Tensor& scale,
                                          double tau, double margin, c10::string_view behaviour) {
  const bool paper = is_paper_behaviour(behaviour, "_gndrp_margin_loss_backward");
  const auto a = prepare_gndrp_margin_loss_backward(grad_loss, cam, labels, logits, plane_max, scale);
  const int64_t hw = a.cam.hw;
  if (a.grad_cam.numel() == 0) return a.grad_cam;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cam.scalar_type(), "gndrp_margin_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t g = a.grad_loss.item<acc_t>();
    const scalar_t* xp = a.cam.x.const_data_ptr<scalar_t>();
    scalar_t* gp = a.grad_cam.mutable_data_ptr<scalar_t>();
    const acc_t* tp = a.labels.const_data_ptr<acc_t>();
    const acc_t* yp = a.logits.const_data_ptr<acc_t>();
    const acc_t* mp = a.plane_max.const_data_ptr<acc_t>();
    const acc_t* sp = a.scale.const_data_ptr<acc_t>();
    at::parallel_for(0, a.cam.count, plane_grain(hw), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const acc_t w =
            g * margin_loss_grad<acc_t>(yp[i], tp[i], static_cast<acc_t>(margin), paper) * sp[i];
        gndrp_plane_backward<scalar_t, acc_t>(xp + i * hw, gp + i * hw, hw, tp[i] > acc_t(0),
                                              mp[i], static_cast<acc_t>(tau), paper, w);
      }
    });
  });
  return a.grad_cam;
}

TORCH_LIBRARY_IMPL(rib_ext, CPU, m) {
  m.impl("gndrp_margin_loss", &gndrp_margin_loss_cpu);
  m.impl("_gndrp_margin_loss_backward", &gndrp_margin_loss_backward_cpu);
}

}  // namespace cpu
}  // namespace rib_ext
