"""The compiled kernels' argument checks (csrc/checks.h, csrc/host_prep.h): every refusal a caller
can meet, with its message. The CPU and CUDA kernels run the same checks, so CPU tensors test both."""
import re

import pytest
import torch

from rib_ext import ops

pytestmark = pytest.mark.skipif(not ops.HAS_C, reason="needs the compiled extension")

OPS = torch.ops.rib_ext


def _cam(*shape):
    return torch.zeros(shape)


def _nk(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


PRESENT = torch.ones(2, 3, dtype=torch.bool)

CASES = {
    "flip_merge_1d": (lambda: OPS.cam_flip_merge(_cam(5), _cam(5)),
                      "cam_flip_merge: cam must be [..., H, W], got [5]"),
    "flip_merge_shapes": (lambda: OPS.cam_flip_merge(_cam(1, 3, 4, 5), _cam(1, 3, 4, 6)),
                          "cam_flip_merge: cam [1, 3, 4, 5] and cam_flip [1, 3, 4, 6] must have the same shape"),
    "accumulate_1d": (lambda: OPS.cam_flip_accumulate_(_cam(5), _cam(5), _cam(5)),
                      "cam_flip_accumulate_: cam must be [..., H, W], got [5]"),
    "accumulate_acc_shape": (lambda: OPS.cam_flip_accumulate_(_cam(1, 3, 4, 4), _cam(1, 3, 4, 5), _cam(1, 3, 4, 5)),
                             "cam_flip_accumulate_: acc [1, 3, 4, 4] and cam [1, 3, 4, 5] must have the same shape"),
    "accumulate_acc_dtype": (lambda: OPS.cam_flip_accumulate_(_cam(1, 3, 4, 5).double(), _cam(1, 3, 4, 5),
                                                              _cam(1, 3, 4, 5)),
                             "cam_flip_accumulate_: acc must be Float for a Float cam, got Double"),
    "max_normalize_1d": (lambda: OPS.cam_max_normalize(_cam(5), 1e-5),
                         "cam_max_normalize: maps must be [..., H, W], got [5]"),
    "max_normalize_int": (lambda: OPS.cam_max_normalize(torch.zeros(2, 3, dtype=torch.long), 1e-5),
                          "cam_max_normalize: maps must be floating point"),
    "pool_3d": (lambda: OPS.gndrp_pool(_cam(3, 4, 4), PRESENT, 0.4, "authors"),
                "gndrp_pool: cam must be [N, K, H, W], got 3 dims [3, 4, 4]"),
    "pool_int": (lambda: OPS.gndrp_pool(torch.zeros(2, 3, 4, 4, dtype=torch.long), PRESENT, 0.4, "authors"),
                 "gndrp_pool: cam must be floating point, got Long"),
    "pool_present_shape": (lambda: OPS.gndrp_pool(_cam(2, 3, 4, 4), PRESENT[:1], 0.4, "authors"),
                           "gndrp_pool: present must be [N, K] = [2, 3], got [1, 3]"),
    "pool_present_dtype": (lambda: OPS.gndrp_pool(_cam(2, 3, 4, 4), _nk(2, 3), 0.4, "authors"),
                           "gndrp_pool: present must be bool, got Float"),
    "pool_backward_grad": (lambda: OPS._gndrp_pool_backward(_nk(3, 3), _cam(2, 3, 4, 4), PRESENT, _nk(2, 3),
                                                             _nk(2, 3), 0.4, "authors"),
                           "_gndrp_pool_backward: grad must be [N, K] = [2, 3], got [3, 3]"),
    "pool_backward_present": (lambda: OPS._gndrp_pool_backward(_nk(2, 3), _cam(2, 3, 4, 4), PRESENT[:, :2],
                                                                _nk(2, 3), _nk(2, 3), 0.4, "authors"),
                              "_gndrp_pool_backward: present must be [N, K] = [2, 3], got [2, 2]"),
    "loss_labels": (lambda: OPS.gndrp_margin_loss(_cam(2, 3, 4, 4), _nk(2, 4), 0.4, 0.5, "authors"),
                    "gndrp_margin_loss: labels must be [N, K] = [2, 3], got [2, 4]"),
    "loss_backward_grad_loss": (lambda: OPS._gndrp_margin_loss_backward(
        _nk(2), _cam(2, 3, 4, 4), _nk(2, 3), _nk(2, 3), _nk(2, 3), _nk(2, 3), 0.4, 0.5, "authors"),
        "_gndrp_margin_loss_backward: grad_loss must be a scalar"),
    "loss_backward_logits": (lambda: OPS._gndrp_margin_loss_backward(
        _nk(), _cam(2, 3, 4, 4), _nk(2, 3), _nk(2, 4), _nk(2, 3), _nk(2, 3), 0.4, 0.5, "authors"),
        "_gndrp_margin_loss_backward: logits must be [N, K] = [2, 3], got [2, 4]"),
    "margin_shapes": (lambda: OPS.margin_loss(_nk(2, 3), _nk(3, 2), 0.5, "authors"),
                      "margin_loss: logits [2, 3] and labels [3, 2] must have the same shape"),
    "margin_int": (lambda: OPS.margin_loss(_nk(2, 3, dtype=torch.long), _nk(2, 3), 0.5, "authors"),
                   "margin_loss: logits must be floating point"),
    "margin_backward_grad": (lambda: OPS._margin_loss_backward(_nk(3, 2), _nk(2, 3), _nk(2, 3), 0.5, "authors"),
                             "_margin_loss_backward: logits [2, 3] and grad [3, 2] must have the same shape"),
}


@pytest.mark.parametrize("case", CASES)
def test_refusal_names_the_argument(case):
    call, message = CASES[case]
    with pytest.raises(RuntimeError, match=re.escape(message)):
        call()
