"""The IRN network: stride-4 outputs, a frozen backbone, the flip-averaged boundary, checkpoints."""
import warnings

import pytest
import torch

from rib_ext.irn import IRNet, build_irnet, infer_boundary, load_irnet, save_irnet
from rib_ext.irn.network import MeanShift, stage_channels
from rib_ext.models import CAMNet, save_cam_net


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return IRNet("resnet18").eval()


@pytest.mark.parametrize("size", [(64, 64), (70, 101)])
def test_outputs_on_the_stride_4_grid(net, size):
    edge, disp = net(torch.randn(2, 3, *size))
    grid = ((size[0] + 3) // 4, (size[1] + 3) // 4)
    assert edge.shape == (2, 1, *grid) and disp.shape == (2, 2, *grid)


def test_stage_channels():
    assert stage_channels("resnet50") == (64, 256, 512, 1024, 2048)
    assert stage_channels("resnet18") == (64, 64, 128, 256, 512)
    with pytest.raises(ValueError, match="unknown backbone"):
        stage_channels("vgg16")


def test_only_the_branches_train():
    torch.manual_seed(0)
    model = IRNet("resnet18").train()
    assert not model.stages.training  # the backbone stays in eval mode
    edge, disp = model(torch.randn(2, 3, 64, 64))
    (edge.sum() + disp.sum()).backward()
    assert all(p.grad is None for p in model.stages.parameters())
    edge_params, disp_params = model.parameter_groups()
    assert all(p.grad is not None for p in edge_params + disp_params)
    head = {id(p) for p in edge_params + disp_params}
    assert head == {id(p) for p in model.parameters() if p.requires_grad}
    assert not {id(p) for p in edge_params} & {id(p) for p in disp_params}
    assert model.edge_out.in_channels == 160 and model.edge_out.bias is not None


def test_boundary_is_the_flip_average(net):
    torch.manual_seed(1)
    img = torch.randn(3, 48, 60)
    views = torch.stack([img, img.flip(-1)])
    b = infer_boundary(net, views)
    assert b.shape == (12, 15) and 0 < b.min() and b.max() < 1
    with torch.no_grad():
        logits = net(views)[0][:, 0]
    torch.testing.assert_close(b, torch.sigmoid((logits[0] + logits[1].flip(-1)) / 2))
    # mirroring the image mirrors its boundary map
    mirrored = infer_boundary(net, torch.stack([img.flip(-1), img]))
    torch.testing.assert_close(mirrored, b.flip(-1), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="image, mirror"):
        infer_boundary(net, views[:1])


def test_mean_shift_tracks_in_training_and_subtracts_at_inference():
    ms = MeanShift(2, momentum=0.5).train()
    x = torch.ones(1, 2, 3, 3)
    x[:, 1] = 3
    assert torch.equal(ms(x), x)
    torch.testing.assert_close(ms.running_mean, torch.tensor([0.5, 1.5]))
    ms.eval()
    torch.testing.assert_close(ms(x)[0, :, 0, 0], torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(ms.running_mean, torch.tensor([0.5, 1.5]))  # no update at eval


def test_save_load_round_trip_and_errors(net, tmp_path):
    save_irnet(tmp_path / "irn.pth", net, meta={"steps": 3})
    loaded = load_irnet(tmp_path / "irn.pth")
    assert not loaded.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_irnet(tmp_path / "missing.pth")
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth: not a rib_ext IRN checkpoint"):
        load_irnet(tmp_path / "other.pth")


def test_backbone_from_a_cam_checkpoint(tmp_path):
    torch.manual_seed(2)
    cam = CAMNet("resnet18", num_classes=5)
    save_cam_net(tmp_path / "cam.pth", cam)
    irn = build_irnet("resnet18", weights=str(tmp_path / "cam.pth"))
    assert torch.equal(irn.stages[0][0].weight, cam.stage1.conv1.weight)
    assert torch.equal(irn.stages[4][1].conv2.weight, cam.stage4.layer4[1].conv2.weight)
    with pytest.raises(ValueError, match="resnet18 CAM network, but the IRN backbone is resnet34"):
        build_irnet("resnet34", weights=str(tmp_path / "cam.pth"))
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_irnet("resnet18", weights=str(tmp_path / "nowhere.pth"))
    with pytest.raises(FileNotFoundError, match="no ImageNet weights"):
        build_irnet("resnet18")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_irnet("resnet18", random_init=True)
    assert any("randomly initialised" in str(w.message) for w in caught)
