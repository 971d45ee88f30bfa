import warnings

import pytest
import torch
import torch.nn as nn
import torchvision

from rib_ext.models import (
    CAMNet,
    FixedBatchNorm,
    MissingWeightsError,
    build_cam_net,
    convert_to_fixed_bn,
    load_backbone_weights,
    load_cam_checkpoint,
    load_cam_net,
    save_cam_net,
)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    net = torchvision.models.resnet18(weights=None)
    # Non-trivial BN statistics, so loading them is actually checked.
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.parametrize("backbone,channels", [("resnet18", 512), ("resnet50", 2048)])
def test_shapes_and_output_stride_16(backbone, channels):
    torch.manual_seed(0)
    model = CAMNet(backbone, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert model.stem(x).shape == (2, channels // 4, 8, 12)
        assert model.features(x).shape == (2, channels, 4, 6)
        assert model.cam(x).shape == (2, 5, 4, 6)
        assert model(x).shape == (2, 5)
    assert model.output_stride == 16
    assert model.classifier.bias is None


def test_stage4_keeps_resolution_and_stem_is_irn_layout():
    model = CAMNet("resnet18", 3)
    names = [n for n, _ in model.stage1.named_children()]
    assert names == ["conv1", "bn1", "relu", "maxpool", "layer1"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        x3 = model.stage3(model.stem(x))
        assert model.stage4(x3).shape[-2:] == x3.shape[-2:] == (4, 4)


def test_strides_argument_changes_output_stride():
    model = CAMNet("resnet18", 3, strides=(2, 2, 2, 2))
    assert model.output_stride == 32
    with torch.no_grad():
        assert model.cam(torch.randn(1, 3, 64, 64)).shape[-2:] == (2, 2)
    with pytest.raises(ValueError, match="strides"):
        CAMNet("resnet18", 3, strides=(2, 2, 3, 1))
    with pytest.raises(ValueError, match="resnet152"):
        CAMNet("resnet152", 3)


def test_every_bn_is_fixed():
    model = CAMNet("resnet50", 4)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, FixedBatchNorm) for m in bns)


def test_fixed_bn_uses_running_stats_in_train_mode():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-1, 1)
    holder = nn.Sequential(bn)
    convert_to_fixed_bn(holder)
    fixed = holder[0]
    assert isinstance(fixed, FixedBatchNorm) and fixed.weight.requires_grad
    before = fixed.running_mean.clone()
    fixed.train()
    x = torch.randn(3, 4, 5, 5) * 3 + 2
    alone = fixed(x[:1])
    batched = fixed(torch.cat([x[:1], torch.randn(5, 4, 5, 5) * 10]))[:1]
    torch.testing.assert_close(alone, batched)
    expected = (x[:1] - bn.running_mean[:, None, None]) / torch.sqrt(
        bn.running_var[:, None, None] + bn.eps) * bn.weight[:, None, None] + bn.bias[:, None, None]
    torch.testing.assert_close(alone, expected)
    torch.testing.assert_close(fixed.running_mean, before)


def test_network_output_independent_of_batch_in_train_mode():
    torch.manual_seed(0)
    model = CAMNet("resnet18", 3).train()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1]), model(x)[:1], rtol=1e-4, atol=1e-5)


def test_only_stages_3_4_and_classifier_get_gradients():
    torch.manual_seed(0)
    model = CAMNet("resnet18", 3).train()
    # Even with stage 2 unfrozen by hand, the detach keeps gradients out of it.
    model.stage2.requires_grad_(True)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    assert not model.stem(x).requires_grad
    model(x).sum().backward()
    assert x.grad is None
    for p in list(model.stage1.parameters()) + list(model.stage2.parameters()):
        assert p.grad is None
    head = list(model.stage3.parameters()) + list(model.stage4.parameters())
    for p in head + [model.classifier.weight]:
        assert p.grad is not None
    assert any(p.grad.abs().sum() > 0 for p in head)


def test_stem_frozen_and_trainable_parameters():
    model = CAMNet("resnet18", 3)
    model.requires_grad_(True)
    model.train()  # re-freezes the stem
    assert not any(p.requires_grad for p in model.stem_parameters())
    assert not model.stage1.training and not model.stage2.training and model.stage3.training
    backbone, classifier = model.trainable_parameters()
    expected = {id(p) for p in list(model.stage3.parameters()) + list(model.stage4.parameters())}
    assert {id(p) for p in backbone} == expected
    # The fixed-BN affine parameters of stages 3-4 train, as in IRN.
    assert id(model.stage3.layer3[0].bn1.weight) in expected
    assert [id(p) for p in classifier] == [id(model.classifier.weight)]
    named = model.named_trainable_parameters()
    assert len(named) == len(backbone) + 1 and "classifier.weight" in named


def test_forward_equals_cam_mean():
    torch.manual_seed(0)
    model = CAMNet("resnet18", 6).eval()
    x = torch.randn(2, 3, 80, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.cam(x).mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)


def test_torchvision_checkpoint_round_trip(resnet18_file):
    model = build_cam_net("resnet18", 4, weights=resnet18_file)
    reference = torch.load(resnet18_file, weights_only=True)
    got = model.torchvision_view().state_dict()
    assert set(got) == set(reference) - {"fc.weight", "fc.bias"}
    for key, value in got.items():
        assert torch.equal(value, reference[key]), key
    # And the network computes what torchvision's does (same BN statistics), up to stage 3.
    tv = torchvision.models.resnet18(weights=None)
    tv.load_state_dict(reference)
    tv.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = model.stage3(model.stem(x))
        theirs = tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x)))))))
    torch.testing.assert_close(ours, theirs)


def test_resnet50_checkpoint_wrapped_and_prefixed(tmp_path):
    torch.manual_seed(0)
    state = torchvision.models.resnet50(weights=None).state_dict()
    path = tmp_path / "r50.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    model = CAMNet("resnet50", 20)
    load_backbone_weights(model, path)
    got = model.torchvision_view().state_dict()
    assert all(torch.equal(v, state[k]) for k, v in got.items())


def test_bad_weight_files(tmp_path, resnet18_file):
    model = CAMNet("resnet50", 20)
    not_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_dict)
    with pytest.raises(ValueError, match="list.pth.*expected a state dict"):
        load_backbone_weights(model, not_dict)

    with pytest.raises(ValueError, match="resnet18.pth: torchvision resnet18 weights, but the "
                                         "backbone is resnet50: pass --backbone resnet18"):
        load_backbone_weights(model, resnet18_file)

    data = resnet18_file.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.pth.*not a readable"):
        load_backbone_weights(CAMNet("resnet18", 20), truncated)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ValueError, match="garbage.pth"):
        load_backbone_weights(model, garbage)

    state = torch.load(resnet18_file, weights_only=True)
    state["layer2.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    wrong_shape = tmp_path / "shape.pth"
    torch.save(state, wrong_shape)
    with pytest.raises(ValueError, match=r"shape.pth.*wrong shapes: layer2.0.conv1.weight"):
        load_backbone_weights(CAMNet("resnet18", 20), wrong_shape)

    missing = tmp_path / "nowhere" / "resnet50-0676ba61.pth"
    with pytest.raises(FileNotFoundError, match="nowhere.*--random-init"):
        load_backbone_weights(model, missing)


def test_build_requires_weights_or_random_init(resnet18_file):
    with pytest.raises(MissingWeightsError, match="resnet50-0676ba61.pth.*--random-init"):
        build_cam_net("resnet50", 20)
    with pytest.raises(ValueError, match="choose one"):
        build_cam_net("resnet18", 20, weights=resnet18_file, random_init=True)
    with pytest.warns(UserWarning, match="randomly initialised"):
        model = build_cam_net("resnet18", 20, random_init=True)
    assert isinstance(model, CAMNet)


def test_save_and_load_cam_net(tmp_path):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_cam_net("resnet18", 7, random_init=True)
    model.classifier.weight.data.normal_()
    path = tmp_path / "cam" / "net.pth"
    save_cam_net(path, model, {"epochs": 5, "dataset": "demo"})
    assert [p.name for p in path.parent.iterdir()] == ["net.pth"]  # no temp file left behind
    loaded = load_cam_net(path, "cpu")
    assert loaded.num_classes == 7 and loaded.backbone_name == "resnet18" and not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert load_cam_checkpoint(path)["meta"] == {"epochs": 5, "dataset": "demo"}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), loaded(x))


def test_load_cam_net_rejects_other_files(tmp_path, resnet18_file):
    with pytest.raises(ValueError, match="resnet18.pth: torchvision resnet18 ImageNet weights, not "
                                         "a trained classifier: pass them with --weights"):
        load_cam_net(resnet18_file)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_cam_net(tmp_path / "absent.pth")
