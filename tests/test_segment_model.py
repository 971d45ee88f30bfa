"""DeepLab-v2: output stride 8, the ASPP head, frozen batch norm, backbone weights and model files."""

import pytest
import torch
import torch.nn as nn
import torchvision

from rib_ext.models import FixedBatchNorm, MissingWeightsError
from rib_ext.segment import ASPP, DeepLabV2, build_deeplab, dilated_resnet, load_deeplab, save_deeplab

from factories import tiny_deeplab


pytestmark = pytest.mark.usefixtures("one_thread")


def test_output_shapes_and_stride_8():
    model = tiny_deeplab(num_classes=5).eval()
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        assert model.features(x).shape == (1, 512, 9, 9)  # ceil(65 / 8)
        assert model.logits(x).shape == (1, 5, 9, 9)
        out = model(x)
    assert out.shape == (1, 5, 65, 65)
    assert torch.isfinite(out).all()
    for layer in (model.backbone.layer3, model.backbone.layer4):
        assert all(m.stride == (1, 1) for m in layer.modules() if isinstance(m, nn.Conv2d))


def test_dilation_matches_torchvision_replace_stride_with_dilation():
    ours = dilated_resnet("resnet50")
    ref = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
    ref_convs = {n: m for n, m in ref.named_modules() if isinstance(m, nn.Conv2d)}
    our_convs = {n: m for n, m in ours.named_modules() if isinstance(m, nn.Conv2d)}
    assert our_convs.keys() == ref_convs.keys()
    for name, conv in our_convs.items():
        ref_conv = ref_convs[name]
        assert (conv.stride, conv.dilation, conv.padding) == (ref_conv.stride, ref_conv.dilation,
                                                              ref_conv.padding), name
    assert ours.layer4[2].conv2.dilation == (4, 4)


def test_aspp_branches_are_dilated_3x3_convs_whose_outputs_are_summed():
    torch.manual_seed(0)
    aspp = ASPP(8, 3)
    assert len(aspp.branches) == 4
    for conv, d in zip(aspp.branches, (6, 12, 18, 24)):
        assert conv.kernel_size == (3, 3)
        assert conv.dilation == (d, d) and conv.padding == (d, d)
        assert conv.bias is not None and conv.out_channels == 3
        nn.init.normal_(conv.bias)  # non-zero biases, so a missing bias term would show
    x = torch.randn(2, 8, 11, 13)
    with torch.no_grad():
        expected = sum(conv(x) for conv in aspp.branches)
        out = aspp(x)
    assert out.shape == (2, 3, 11, 13)
    torch.testing.assert_close(out, expected)


def test_head_of_the_model_uses_its_classes():
    model = DeepLabV2("resnet18", 21)
    assert [c.out_channels for c in model.aspp.branches] == [21] * 4
    assert [c.in_channels for c in model.aspp.branches] == [512] * 4


def test_batch_norm_is_frozen():
    model = tiny_deeplab().train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, FixedBatchNorm) for m in bns)
    assert not any(p.requires_grad for m in bns for p in m.parameters())
    backbone, weights, biases = model.parameter_groups()
    bn_ids = {id(p) for m in bns for p in m.parameters()}
    assert not bn_ids & {id(p) for p in backbone}
    # Batch statistics would make an image's output depend on the rest of its batch.
    a, b = torch.randn(1, 3, 17, 17), torch.randn(1, 3, 17, 17)
    with torch.no_grad():
        alone = model(a)
        together = model(torch.cat([a, b * 5]))[:1]
    torch.testing.assert_close(alone, together)


def test_missing_weights_give_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(MissingWeightsError, match="resnet101-63fe2227.pth") as err:
        build_deeplab("resnet101", 21, weights=missing)
    assert str(missing) in str(err.value)
    with pytest.raises(MissingWeightsError, match="--random-init"):
        build_deeplab("resnet18", 21)
    with pytest.warns(UserWarning, match="randomly initialised"):
        build_deeplab("resnet18", 21, random_init=True)


def test_loads_torchvision_weights_and_rejects_other_depths(tmp_path):
    torch.manual_seed(3)
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)  # fc.* included, as in torchvision's files
    model = build_deeplab("resnet18", 3, weights=path)
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    torch.testing.assert_close(model.backbone.bn1.running_var, ref.bn1.running_var)
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="r34.pth.*resnet34"):
        build_deeplab("resnet18", 3, weights=tmp_path / "r34.pth")


def test_model_file_round_trip(tmp_path):
    model = tiny_deeplab(num_classes=3, seed=1).eval()
    save_deeplab(tmp_path / "m.pth", model, meta={"note": "x"})
    loaded = load_deeplab(tmp_path / "m.pth")
    x = torch.randn(1, 3, 17, 25)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth.*not a rib_ext DeepLab-v2 model"):
        load_deeplab(tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_deeplab(tmp_path / "absent.pth")
