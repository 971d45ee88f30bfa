// GNDRP masked pooling, CPU (OpenMP through at::parallel_for over the N*K planes).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "gndrp_plane.h"

namespace rib_ext {
namespace cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor> gndrp_pool_cpu(const at::Tensor& cam,
                                                              const at::Tensor& present,
                                                              double tau, bool paper) {
  check_cam(cam, "gndrp_pool");
  check_rows(cam, present, "present", "gndrp_pool");
  TORCH_CHECK(present.scalar_type() == at::kBool, "gndrp_pool: present must be bool, got ",
              present.scalar_type());
  const auto x = cam.contiguous();
  const auto p = present.contiguous();
  const int64_t planes = cam.size(0) * cam.size(1);
  const int64_t hw = cam.size(2) * cam.size(3);
  const auto acc_type = at::toOpMathType(cam.scalar_type());
  auto pooled = at::empty({cam.size(0), cam.size(1)}, cam.options());
  auto plane_max = at::empty({cam.size(0), cam.size(1)}, cam.options().dtype(acc_type));
  auto scale = at::empty_like(plane_max);
  if (planes == 0) return {pooled, plane_max, scale};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cam.scalar_type(), "gndrp_pool_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const bool* pp = p.const_data_ptr<bool>();
    scalar_t* outp = pooled.mutable_data_ptr<scalar_t>();
    acc_t* maxp = plane_max.mutable_data_ptr<acc_t>();
    acc_t* scalep = scale.mutable_data_ptr<acc_t>();
    at::parallel_for(0, planes, plane_grain(hw), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const auto s = gndrp_plane<scalar_t, acc_t>(xp + i * hw, hw, pp[i], static_cast<acc_t>(tau),
                                                    paper);
        outp[i] = static_cast<scalar_t>(s.pooled);
        maxp[i] = s.plane_max;
        scalep[i] = s.scale;
      }
    });
  });
  return {pooled, plane_max, scale};
}

// grad_cam[n,k,u] = grad[n,k] * scale[n,k] * kept(n,k,u)
at::Tensor gndrp_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& cam,
                                   const at::Tensor& present, const at::Tensor& plane_max,
                                   const at::Tensor& scale, double tau, bool paper) {
  check_cam(cam, "_gndrp_pool_backward");
  check_rows(cam, grad, "grad", "_gndrp_pool_backward");
  check_rows(cam, present, "present", "_gndrp_pool_backward");
  const auto x = cam.contiguous();
  const int64_t planes = cam.size(0) * cam.size(1);
  const int64_t hw = cam.size(2) * cam.size(3);
  auto grad_cam = at::empty(cam.sizes(), cam.options().memory_format(at::MemoryFormat::Contiguous));
  if (planes == 0) return grad_cam;
  const auto acc_type = at::toOpMathType(cam.scalar_type());
  const auto g = grad.to(acc_type).contiguous();
  const auto p = present.to(at::kBool).contiguous();
  const auto m = plane_max.to(acc_type).contiguous();
  const auto s = scale.to(acc_type).contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cam.scalar_type(), "gndrp_pool_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* gp = grad_cam.mutable_data_ptr<scalar_t>();
    const acc_t* gr = g.const_data_ptr<acc_t>();
    const bool* pp = p.const_data_ptr<bool>();
    const acc_t* mp = m.const_data_ptr<acc_t>();
    const acc_t* sp = s.const_data_ptr<acc_t>();
    at::parallel_for(0, planes, plane_grain(hw), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        gndrp_plane_backward<scalar_t, acc_t>(xp + i * hw, gp + i * hw, hw, pp[i], mp[i],
                                              static_cast<acc_t>(tau), paper, gr[i] * sp[i]);
      }
    });
  });
  return grad_cam;
}

TORCH_LIBRARY_IMPL(rib_ext, CPU, m) {
  m.impl("gndrp_pool", &gndrp_pool_cpu);
  m.impl("_gndrp_pool_backward", &gndrp_pool_backward_cpu);
}

}  // namespace cpu
}  // namespace rib_ext
