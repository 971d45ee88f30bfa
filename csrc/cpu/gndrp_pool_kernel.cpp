// GNDRP masked pooling, CPU (OpenMP through at::parallel_for over the N*K planes).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../host_prep.h"
#include "gndrp_plane.h"

namespace rib_ext {
namespace cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor> gndrp_pool_cpu(const at::Tensor& cam,
                                                              const at::Tensor& present,
                                                              double tau,
                                                              c10::string_view behaviour) {
  const bool paper = is_paper_behaviour(behaviour, "gndrp_pool");
  const auto a = prepare_gndrp_pool(cam, present, tau);
  const int64_t planes = a.cam.count;
  const int64_t hw = a.cam.hw;
  if (planes == 0) return a.out.tuple();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cam.scalar_type(), "gndrp_pool_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = a.cam.x.const_data_ptr<scalar_t>();
    const bool* pp = a.present.const_data_ptr<bool>();
    scalar_t* outp = a.out.pooled.mutable_data_ptr<scalar_t>();
    acc_t* maxp = a.out.plane_max.mutable_data_ptr<acc_t>();
    acc_t* scalep = a.out.scale.mutable_data_ptr<acc_t>();
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
  return a.out.tuple();
}

// grad_cam[n,k,u] = grad[n,k] * scale[n,k] * kept(n,k,u)
at::Tensor gndrp_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& cam,
                                   const at::Tensor& present, const at::Tensor& plane_max,
                                   const at::Tensor& scale, double tau,
                                   c10::string_view behaviour) {
  const bool paper = is_paper_behaviour(behaviour, "_gndrp_pool_backward");
  const auto a = prepare_gndrp_pool_backward(grad, cam, present, plane_max, scale);
  const int64_t hw = a.cam.hw;
  if (a.grad_cam.numel() == 0) return a.grad_cam;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cam.scalar_type(), "gndrp_pool_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = a.cam.x.const_data_ptr<scalar_t>();
    scalar_t* gp = a.grad_cam.mutable_data_ptr<scalar_t>();
    const acc_t* gr = a.grad.const_data_ptr<acc_t>();
    const bool* pp = a.present.const_data_ptr<bool>();
    const acc_t* mp = a.plane_max.const_data_ptr<acc_t>();
    const acc_t* sp = a.scale.const_data_ptr<acc_t>();
    at::parallel_for(0, a.cam.count, plane_grain(hw), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        gndrp_plane_backward<scalar_t, acc_t>(xp + i * hw, gp + i * hw, hw, pp[i], mp[i],
                                              static_cast<acc_t>(tau), paper, gr[i] * sp[i]);
      }
    });
  });
  return a.grad_cam;
}

TORCH_LIBRARY_IMPL(rib_ext, CPU, m) {
  m.impl("gndrp_pool", &gndrp_pool_cpu);
  m.impl("_gndrp_pool_backward", &gndrp_pool_backward_cpu);
}

}  // namespace cpu
}  // namespace rib_ext
