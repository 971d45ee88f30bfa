"""make_sem_seg per image: class ids, the global-max normalisation, the background plane, walls."""
import numpy as np
import pytest
import torch

from rib_ext.irn import IRNConfig, make_sem_seg
from rib_ext.irn.sem_seg import walked_to_labels


def _columns(left, right, h=3, w=4):
    """[h, w] stride-4 plane: ``left`` on columns 0-1, ``right`` on columns 2-3."""
    plane = torch.full((h, w), float(right))
    plane[:, :2] = left
    return plane


def test_keys_become_class_ids_and_the_crop_is_the_image():
    walked = torch.stack([torch.full((3, 4), 0.8), torch.full((3, 4), 0.1)])
    out = walked_to_labels(walked, [2, 4], (10, 13), bg_thres=0.25)
    assert out.shape == (10, 13) and out.dtype == np.uint8
    assert (out == 3).all()  # key 2 -> class id 3 wins everywhere
    walked[1] = 0.9
    assert (walked_to_labels(walked, [2, 4], (10, 13), 0.25) == 5).all()  # key 4 -> id 5


def test_global_max_and_background_plane():
    # Class a (key 0): 1.0 left, 0 right. Class b (key 1): 0.2 everywhere. Divided by the global
    # max (1.0, not each class's own), b stays 0.2 < 0.25: the right side is background. Per-class
    # normalisation would have made b 1.0 there.
    walked = torch.stack([_columns(1.0, 0.0), _columns(0.2, 0.2)])
    out = walked_to_labels(walked, [0, 1], (12, 16), bg_thres=0.25)
    assert (out[:, :6] == 1).all()
    assert (out[:, 10:] == 0).all()
    # With the threshold under 0.2, b takes the right side.
    out = walked_to_labels(walked, [0, 1], (12, 16), bg_thres=0.15)
    assert (out[:, 10:] == 2).all() and (out[:, :6] == 1).all()
    # Scaling all maps changes nothing (only ratios to the global max count).
    np.testing.assert_array_equal(walked_to_labels(walked * 7, [0, 1], (12, 16), 0.15), out)


def test_no_maps_or_all_zero_maps_give_background():
    assert (walked_to_labels(torch.zeros(0, 3, 4), [], (9, 12), 0.25) == 0).all()
    assert (walked_to_labels(torch.zeros(2, 3, 4), [0, 1], (9, 12), 0.25) == 0).all()


def test_walk_respects_a_boundary_wall():
    # Stride-4 grid 6 x 12; a boundary wall at column 6. Class key 3 seeds the left, key 7 the right.
    h, w = 6, 12
    boundary = torch.zeros(h, w)
    boundary[:, 6] = 1.0
    maps = torch.zeros(2, h, w)
    maps[0, 2, 1] = 1.0
    maps[1, 3, 10] = 0.6
    out = make_sem_seg(maps, [3, 7], boundary, (4 * h, 4 * w), IRNConfig.preset(behaviour="rib"))
    assert (out[:, :20] == 4).all()  # everything left of the wall: class id 4
    assert (out[:, 30:] == 8).all()  # right of it: class id 8 (0.6 after the walk is > 0.27)
    assert (out[:, 25:27] == 0).all()  # the wall itself carries nothing: background


def test_power_applies_before_the_walk():
    # A wall at column 6 isolates two constant regions: class key 0 at 1.0 on the left, key 1 at
    # 0.6 on the right. Each region keeps its constant through the walk, so on the right the
    # score is 0.6 ** power against the 0.5 background plane: 0.6 (power 1) wins, 0.216
    # (power 3) loses.
    h, w = 6, 12
    boundary = torch.zeros(h, w)
    boundary[:, 6] = 1.0
    maps = torch.zeros(2, h, w)
    maps[0, :, :6] = 1.0
    maps[1, :, 7:] = 0.6
    plain = make_sem_seg(maps, [0, 1], boundary, (4 * h, 4 * w), IRNConfig(sem_seg_bg_thres=0.5))
    powered = make_sem_seg(maps, [0, 1], boundary, (4 * h, 4 * w),
                           IRNConfig(sem_seg_bg_thres=0.5, map_power=3.0))
    assert (plain[:, :20] == 1).all() and (powered[:, :20] == 1).all()
    assert (plain[:, 30:] == 2).all()
    assert (powered[:, 30:] == 0).all()


def test_maps_and_boundary_must_share_the_grid():
    with pytest.raises(ValueError, match="stride-4 grid"):
        make_sem_seg(torch.zeros(1, 3, 4), [0], torch.zeros(3, 5), (12, 16))
    with pytest.raises(ValueError, match="share the stride-4 grid"):
        make_sem_seg(torch.zeros(1, 3, 5), [0], torch.zeros(3, 4), (12, 16))
