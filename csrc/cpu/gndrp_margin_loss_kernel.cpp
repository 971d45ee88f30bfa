// Fused GNDRP pooling + RIB margin loss, CPU. Forward: one pass per plane (max, masked sum) plus
// the loss term; backward: one pass writing grad_cam = g * dloss/dy * scale * kept.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "gndrp_plane.h"

namespace rib_ext {
namespace cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gndrp_margin_loss_cpu(
    const at::Tensor& cam, const at::Tensor& labels, double tau, double margin, bool paper) {
  check_cam(cam, "gndrp_margin_loss");
  check_rows(cam, labels, "labels", "gndrp_margin_loss");
  const auto x = cam.contiguous();
  const int64_t planes = cam.size(0) * cam.size(1);
  const int64_t hw = cam.size(2) * cam.size(3);
  const auto acc_type = at::toOpMathType(cam.scalar_type());
  const auto t = labels.to(acc_type).contiguous();
  auto logits = at::empty({cam.size(0), cam.size(1)}, cam.options());
  auto plane_max = at::empty({cam.size(0), cam.size(1)}, cam.options().dtype(acc_type));
  auto scale = at::empty_like(plane_max);
  auto terms = at::zeros_like(plane_max);

  if (planes > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cam.scalar_type(), "gndrp_margin_loss_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const acc_t* tp = t.const_data_ptr<acc_t>();
      scalar_t* yp = logits.mutable_data_ptr<scalar_t>();
      acc_t* maxp = plane_max.mutable_data_ptr<acc_t>();
      acc_t* scalep = scale.mutable_data_ptr<acc_t>();
      acc_t* termp = terms.mutable_data_ptr<acc_t>();
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
  }
  return {terms.sum(), logits, plane_max, scale};
}

at::Tensor gndrp_margin_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& cam,
                                          const at::Tensor& labels, const at::Tensor& logits,
                                          const at::Tensor& plane_max, const at::Tensor& scale,
                                          double tau, double margin, bool paper) {
  check_cam(cam, "_gndrp_margin_loss_backward");
  check_rows(cam, labels, "labels", "_gndrp_margin_loss_backward");
  check_rows(cam, logits, "logits", "_gndrp_margin_loss_backward");
  TORCH_CHECK(grad_loss.numel() == 1, "_gndrp_margin_loss_backward: grad_loss must be a scalar");
  const auto x = cam.contiguous();
  const int64_t planes = cam.size(0) * cam.size(1);
  const int64_t hw = cam.size(2) * cam.size(3);
  auto grad_cam = at::empty(cam.sizes(), cam.options().memory_format(at::MemoryFormat::Contiguous));
  if (planes == 0) return grad_cam;
  const auto acc_type = at::toOpMathType(cam.scalar_type());
  const auto t = labels.to(acc_type).contiguous();
  const auto y = logits.to(acc_type).contiguous();
  const auto m = plane_max.to(acc_type).contiguous();
  const auto s = scale.to(acc_type).contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cam.scalar_type(), "gndrp_margin_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t g = grad_loss.item<acc_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* gp = grad_cam.mutable_data_ptr<scalar_t>();
    const acc_t* tp = t.const_data_ptr<acc_t>();
    const acc_t* yp = y.const_data_ptr<acc_t>();
    const acc_t* mp = m.const_data_ptr<acc_t>();
    const acc_t* sp = s.const_data_ptr<acc_t>();
    at::parallel_for(0, planes, plane_grain(hw), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const acc_t w =
            g * margin_loss_grad<acc_t>(yp[i], tp[i], static_cast<acc_t>(margin), paper) * sp[i];
        gndrp_plane_backward<scalar_t, acc_t>(xp + i * hw, gp + i * hw, hw, tp[i] > acc_t(0),
                                              mp[i], static_cast<acc_t>(tau), paper, w);
      }
    });
  });
  return grad_cam;
}

TORCH_LIBRARY_IMPL(rib_ext, CPU, m) {
  m.impl("gndrp_margin_loss", &gndrp_margin_loss_cpu);
  m.impl("_gndrp_margin_loss_backward", &gndrp_margin_loss_backward_cpu);
}

}  // namespace cpu
}  // namespace rib_ext
