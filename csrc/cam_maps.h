// Operators that build RIB / IRN localization maps (no training-time gradient needed).
//
// cam_flip_merge(cam, cam_flip) -> out
// cam_flip_accumulate_(acc, cam, cam_flip)        (in place: acc += merge)
//   cam, cam_flip [..., H, W]  raw CAM of an image and of its horizontal flip at one scale
//   merge[..., h, w] = relu(cam[..., h, w]) + relu(cam_flip[..., h, W-1-w])
//   i.e. both views ReLU'd, the flipped one flipped back, summed (IRN's x[0] + x[1].flip(-1)).
//   acc is float32 (or float64); cam may be half precision on CUDA.
//
// cam_max_normalize(maps, eps) -> maps / (max over the last two dims + eps)
//   IRN's per-class normalisation of the finished maps (eps = 1e-5). Its gradient (Python side)
//   also flows through the max, to the first maximal location.
#pragma once
