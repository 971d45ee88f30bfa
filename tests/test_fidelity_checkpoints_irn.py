"""The authors' checkpoints load (res50_cam.pth, res50_irn.pth layouts); IRN's padded boundary
inference (VOC) and unpadded one (COCO); the COCO random-walk preset."""
import numpy as np
import pytest
import torch

from authors_nets import AuthorsCAM, AuthorsIRN
from rib_ext.config import IRNConfig, PipelineConfig
from rib_ext.irn.network import IRNet, infer_boundary, load_irnet, save_irnet
from rib_ext.models import load_cam_net
from rib_ext.irn.authors import is_authors_irn_state
from rib_ext.models.authors import is_authors_cam_state


@pytest.fixture(scope="module")
def authors_irn():
    return AuthorsIRN(seed=3, crop_size=64)


def test_authors_res50_cam_loads_and_gives_their_cams(tmp_path):
    theirs = AuthorsCAM(n_cls=20, seed=1)
    state = theirs.state_dict()
    assert {"stage1.0.weight", "stage1.1.running_var", "stage1.4.0.conv1.weight",
            "stage2.0.0.conv1.weight", "resnet50.conv1.weight", "classifier.weight"} <= set(state)
    path = tmp_path / "res50_cam.pth"
    torch.save(state, path)
    ours = load_cam_net(path)
    assert ours.backbone_name == "resnet50" and ours.num_classes == 20
    x = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours.cam(x), theirs(x), rtol=1e-5, atol=1e-5)
    # A DataParallel-prefixed copy is recognised as well; our own checkpoints still load.
    assert is_authors_cam_state({f"module.{k}": v for k, v in state.items()})
    from rib_ext.models import save_cam_net
    save_cam_net(tmp_path / "ours.pth", ours)
    again = load_cam_net(tmp_path / "ours.pth")
    with torch.no_grad():
        torch.testing.assert_close(again.cam(x), ours.cam(x), rtol=0, atol=0)


def _views(h=36, w=44, seed=0):
    img = torch.randn(3, h, w, generator=torch.Generator().manual_seed(seed))
    return torch.stack([img, img.flip(-1)])


def test_authors_res50_irn_loads_and_pads_like_edge_displacement(tmp_path, authors_irn):
    theirs = authors_irn
    state = theirs.state_dict()
    state["path_indices0"] = torch.zeros(3, 4, dtype=torch.long)  # the loss's buffers: dropped
    path = tmp_path / "res50_irn.pth"
    torch.save(state, path)
    assert is_authors_irn_state(state)
    net = load_irnet(path)
    views = _views()
    with torch.no_grad():
        want_voc = theirs.edge_displacement(views, coco=False)[0][0]
        want_coco = theirs.edge_displacement(views, coco=True)[0][0]
        got_voc = infer_boundary(net, views, pad_to=64)
        got_coco = infer_boundary(net, views, pad_to=None)
        torch.testing.assert_close(got_voc, want_voc, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_coco, want_coco, rtol=1e-5, atol=1e-6)
        # Padding changes the map everywhere (GroupNorm sees the zeros): the option matters.
        assert (got_voc - got_coco).abs().max() > 1e-3
        # The displacement branch maps too (mean shift included).
        _, dp = theirs.net_forward(views)
        torch.testing.assert_close(net(views)[1], dp, rtol=1e-5, atol=1e-5)
    # Our own checkpoints still load.
    save_irnet(tmp_path / "irn.pth", net)
    assert isinstance(load_irnet(tmp_path / "irn.pth"), IRNet)


def test_irn_presets_pad_voc_only_and_coco_background_threshold():
    voc = IRNConfig.preset(behaviour="rib")
    coco = IRNConfig.preset("coco", behaviour="rib")
    assert (voc.sem_seg_bg_thres, voc.boundary_pad_to, voc.map_power) == (0.27, 512, 1.3)
    assert (coco.sem_seg_bg_thres, coco.boundary_pad_to, coco.map_power) == (0.22, None, 1.3)
    assert (coco.conf_fg, coco.conf_bg) == (0.35, 0.17)
    assert IRNConfig.preset(behaviour="irn").boundary_pad_to == 512
    assert IRNConfig.preset("coco", behaviour="irn").sem_seg_bg_thres == 0.25
    assert IRNConfig.preset(behaviour="rib_coco", sem_seg_bg_thres=0.3).sem_seg_bg_thres == 0.3
    assert PipelineConfig().irn.boundary_pad_to == 512
    with pytest.raises(ValueError, match="boundary_pad_to"):
        IRNConfig(boundary_pad_to=0)


def test_make_sem_seg_stage_pads_the_boundary_input(tmp_path, authors_irn, monkeypatch):
    """The stage hands cfg.boundary_pad_to to the boundary inference."""
    import rib_ext.irn.sem_seg as sem_seg

    seen = []
    real = sem_seg.infer_boundary
    monkeypatch.setattr(sem_seg, "infer_boundary",
                        lambda net, views, pad_to=None: seen.append(pad_to) or real(net, views, pad_to))
    from rib_ext.io import save_npy

    class One:
        ids, num_classes = ["a"], 20

        def image(self, i):
            return np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)

        def labels(self, i):  # class 2, the map's key
            return np.eye(20, dtype=np.float32)[2]

    (tmp_path / "maps").mkdir()
    save_npy(tmp_path / "maps" / "a.npy",
             {"keys": np.array([2]), "cam": torch.rand(1, 10, 13),
              "high_res": np.random.rand(1, 40, 52).astype(np.float32)})
    path = tmp_path / "res50_irn.pth"
    torch.save(authors_irn.state_dict(), path)
    cfg = IRNConfig.preset(behaviour="rib", boundary_pad_to=64, device="cpu", exp_times=2)
    sem_seg.make_sem_seg_stage(One(), tmp_path / "maps", path, tmp_path / "out", cfg)
    assert seen == [64]
    from PIL import Image
    with Image.open(tmp_path / "out" / "a.png") as png:  # a pseudo mask: grayscale indices
        assert png.mode == "L" and np.asarray(png).shape == (40, 52)
