// The RIB clipped-margin loss, elementwise (the reduction is done by the Python wrapper).
//
// logits [N, K] (float32/float64; half on CUDA), labels [N, K] same shape, margin m.
//   paper:     out = -t * min(m, y),  d out / d y = -t where y < m, 0 where y >= m
//   reference: out = -t * y,          d out / d y = -t  (the authors' code: no clip; the margin is
//                                                        a stop criterion applied by the engine)
#pragma once
