"""RIB on other classifiers: the adapter protocol (GAP(CAM) == logits) for every family, the
engine's maps against the plain per-image loop for each, the Python API, and models refused."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision.models as tvm

from rib_ext.config import RIBConfig
from rib_ext.models.adapters import AdapterError, CAMClassifier, adapt, pack_tokens, unpack_tokens
from rib_ext.rib import OtherImages, RIBEngine, Target, oracle_loop

timm = pytest.importorskip("timm", reason="timm is an optional extra: pip install '.[timm]'")

K = 3


def _family(name):
    torch.manual_seed(0)
    return {
        "tv_resnet18": lambda: tvm.resnet18(num_classes=K),
        "tv_efficientnet_b0": lambda: tvm.efficientnet_b0(num_classes=K),
        "tv_mobilenet_v3_small": lambda: tvm.mobilenet_v3_small(num_classes=K),
        "tv_regnet_x_400mf": lambda: tvm.regnet_x_400mf(num_classes=K),
        "tv_convnext_tiny": lambda: tvm.convnext_tiny(num_classes=K),
        "timm_resnet18": lambda: timm.create_model("resnet18", num_classes=K),
        "timm_convnext_atto": lambda: timm.create_model("convnext_atto", num_classes=K),
        "timm_efficientnet_b0": lambda: timm.create_model("efficientnet_b0", num_classes=K),
        "timm_mobilenetv3": lambda: timm.create_model("mobilenetv3_small_050", num_classes=K),
        "timm_regnetx_002": lambda: timm.create_model("regnetx_002", num_classes=K),
        "timm_deit_tiny_avg": lambda: timm.create_model("deit_tiny_patch16_224", num_classes=K,
                                                        global_pool="avg"),
        "timm_deit_tiny_token": lambda: timm.create_model("deit_tiny_patch16_224", num_classes=K),
        "tv_vit_b_16": lambda: tvm.vit_b_16(num_classes=K),
        "timm_densenet121_generic": lambda: timm.create_model("densenet121", num_classes=K),
    }[name]()


SLOW = pytest.mark.slow  # the larger networks: the fast suite keeps one of each kind

# The families whose head the adapter keeps exact (the others change it, with a warning).
EXACT = ["tv_resnet18", "timm_convnext_atto", "timm_regnetx_002", "timm_deit_tiny_avg",
         pytest.param("tv_efficientnet_b0", marks=SLOW), pytest.param("tv_regnet_x_400mf", marks=SLOW),
         pytest.param("tv_convnext_tiny", marks=SLOW), pytest.param("timm_resnet18", marks=SLOW),
         pytest.param("timm_efficientnet_b0", marks=SLOW),
         pytest.param("timm_densenet121_generic", marks=SLOW)]
CHANGED = ["timm_mobilenetv3", "timm_deit_tiny_token", pytest.param("tv_mobilenet_v3_small", marks=SLOW),
           pytest.param("tv_vit_b_16", marks=SLOW)]


@pytest.mark.parametrize("name", EXACT)
def test_adapter_mean_cam_is_the_models_logits(name):
    model = _family(name).eval()
    adapted = adapt(model)
    size = (224, 224) if "deit" in name else (72, 104)  # a strict-size ViT takes its own size
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x)
        cam = adapted.cam(x)
    assert cam.shape[:2] == (2, K) and cam.shape[2] > 1 and cam.shape[3] > 1
    torch.testing.assert_close(cam.mean(dim=(2, 3)), want, rtol=1e-3, atol=1e-4)
    # The adapter copies the layers: adapting never touches the user's model.
    body = next(adapted.body.parameters())
    assert all(body.data_ptr() != p.data_ptr() for p in model.parameters())


@pytest.mark.parametrize("name", CHANGED)
def test_adapter_that_changes_the_head_says_so(name):
    model = _family(name).eval()
    with pytest.warns(UserWarning, match="fine-tune"):
        adapted = adapt(model)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        cam = adapted.cam(x)
        assert torch.allclose(adapted(x), cam.mean(dim=(2, 3)))


def test_default_split_is_the_papers_for_resnet50():
    adapted = adapt(tvm.resnet50(num_classes=K))
    assert adapted.split == "layer3"  # stages 3-4 and the classifier adapted
    names = adapted.body.names
    assert names == ["layer3", "layer4"]
    assert not any(p.requires_grad for p in adapted.frozen.parameters())


def test_split_by_name_and_bad_split():
    adapted = adapt(tvm.resnet18(num_classes=K), split="layer4")
    assert adapted.body.names == ["layer4"]
    with pytest.raises(AdapterError, match="layer9.*layer1, layer2"):
        adapt(tvm.resnet18(num_classes=K), split="layer9")
    with pytest.raises(AdapterError, match="blocks"):
        adapt(timm.create_model("deit_tiny_patch16_224", num_classes=K), split="blocks.99")


def test_models_that_fit_no_family_are_refused_with_the_reason():
    with pytest.raises(AdapterError, match="not a global average"):
        adapt(timm.create_model("resnet18", num_classes=K, global_pool="max"))
    with pytest.raises(AdapterError, match="CAMClassifier"):
        adapt(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    net = tvm.resnet18(num_classes=K)
    net.fc = nn.Sequential(nn.Linear(512, 8), nn.ReLU(), nn.Linear(8, K))
    with pytest.raises(AdapterError, match="not a linear layer"):
        adapt(net)
    with pytest.raises(AdapterError, match="'token'"):
        adapt(timm.create_model("deit_tiny_patch16_224", num_classes=K, global_pool="map"))


def test_token_packing_round_trip():
    tokens = torch.randn(2, 1 + 5 + 3 * 4, 6)
    packed = pack_tokens(tokens, 6, (3, 4))
    assert packed.shape == (2, 6, 2 + 3, 4)
    back, grid = unpack_tokens(packed, 6)
    assert grid == (3, 4)
    torch.testing.assert_close(back, tokens)


# ------------------------------------------------------------- RIB's engine against the plain loop

class _Images:
    def __init__(self, n=6, seed=0):
        rng = np.random.default_rng(seed)
        # At least 64 pixels a side: ConvNeXt's patchify stem and three downsamplings need it.
        self._images = [rng.integers(0, 256, size=(64 + 8 * (i % 2), 80 - 8 * (i % 3), 3),
                                     dtype=np.uint8) for i in range(n)]
        self.labels_ = np.zeros((n, K), np.float32)
        for i in range(n):
            self.labels_[i, i % K] = 1

    def __len__(self):
        return len(self._images)

    def image(self, i):
        return self._images[i]

    def label_matrix(self):
        return self.labels_


def _cfg(**kw):
    base = dict(steps=2, lr=0.01, num_others=2, other_resize_long=(64, 80), other_crop=64,
                margin=1e9, scales=(1.0,), loss_scales=(1.0,), group_size=2,
                stop_on_explosion=False)
    base.update(kw)
    return RIBConfig.preset(**base)


ENGINE_FAMILIES = ["tv_resnet18", pytest.param("timm_convnext_atto", marks=SLOW),
                   pytest.param("tv_efficientnet_b0", marks=SLOW),
                   pytest.param("tv_mobilenet_v3_small", marks=SLOW),
                   pytest.param("timm_regnetx_002", marks=SLOW),
                   pytest.param("timm_deit_tiny_avg", marks=SLOW)]


@pytest.mark.parametrize("name", ENGINE_FAMILIES)
def test_engine_maps_equal_the_plain_loop_for_each_family(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = adapt(_family(name)).double().eval()
    data = _Images()
    pool = OtherImages(data, "cpu", resize_long=(64, 80), crop=64)
    targets = [Target(i, f"t{i}", data.image(i), data.label_matrix()[i], pool_index=i)
               for i in range(2)]
    # Average pooling: a random head's CAM is negative for a class as often as not, and GNDRP
    # keeps nothing of such a map (no step would act); the pooling is the same op for every model.
    cfg = _cfg(pooling="gap")
    ours = sorted(RIBEngine(model, pool, cfg, "cpu").run(targets), key=lambda r: r.name)
    theirs = [oracle_loop.adapt_one(model, t, pool, cfg) for t in targets]
    for a, b in zip(ours, theirs):
        assert a.record["steps"] == b.record["steps"] == 2
        np.testing.assert_array_equal(a.maps["keys"], b.maps["keys"])
        np.testing.assert_allclose(a.maps["high_res"], b.maps["high_res"], rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(a.record["target_logit_sums"], b.record["target_logit_sums"],
                                   rtol=1e-6, atol=2e-4)  # rounded to 4 decimals
        # RIB's step raised the image's labelled logits (the maps of a random network may be
        # zero everywhere, so the logits are what shows the adaptation acting).
        first, second = a.record["target_logit_sums"]
        assert second != first


# --------------------------------------------------------------------------------- the Python API

def test_api_maps_are_tensors_in_order_and_batches_are_independent():
    import rib_ext

    torch.manual_seed(0)
    data = _Images(n=6)
    rib = rib_ext.RIB(tvm.resnet18(num_classes=K).double(), cfg=_cfg())
    images = [data.image(i) for i in range(3)]
    labels = data.label_matrix()[:3]
    others = ([data.image(i) for i in range(6)], data.label_matrix())
    maps = rib.maps(images, labels, others=others)
    assert len(maps) == 3 and all(isinstance(m["high_res"], torch.Tensor) for m in maps)
    for m, img, lab in zip(maps, images, labels):
        assert m["high_res"].shape == (int(lab.sum()), *img.shape[:2])
        assert m["keys"].tolist() == np.flatnonzero(lab).tolist()
    # Image 2 alone (its own seed index) gives the map it got in the batch.
    alone = rib.maps(images[2:], labels[2:], others=others, seed_offset=2)
    torch.testing.assert_close(alone[0]["high_res"], maps[2]["high_res"])
    cams = rib.cam(images, labels)
    assert not torch.allclose(cams[0]["high_res"], maps[0]["high_res"])


@pytest.mark.parametrize("bad, match", [
    (lambda img, lab: (img.astype(np.float32) / 255, lab), "uint8"),
    (lambda img, lab: (np.ascontiguousarray(img.transpose(2, 0, 1)), lab), r"channels first"),
    (lambda img, lab: (img, lab[:2]), "classes"),
    (lambda img, lab: (img, np.zeros_like(lab)), "no class"),
])
def test_api_refuses_bad_inputs_with_their_reason(bad, match):
    import rib_ext

    data = _Images(n=2)
    rib = rib_ext.RIB(tvm.resnet18(num_classes=K), cfg=_cfg())
    img, lab = bad(data.image(0), data.label_matrix()[0])
    with pytest.raises(ValueError, match=match):
        rib.cam([img], lab[None] if lab.ndim == 1 and lab.size == K else lab)


def test_camnet_follows_the_protocol_unchanged():
    from factories import tiny_cam_net

    net = tiny_cam_net(k=K)
    assert adapt(net) is net
    assert list(net.head_modules()) == ["stage3", "stage4"]
    assert isinstance(CAMClassifier, type)


def test_the_bf16_vmap_head_keeps_timms_batch_norm_activations():
    """The engine's bf16 vmap path rewrites batch norms as affine maps: timm's BatchNormAct2d
    carries its activation inside, which the rewrite must keep."""
    from rib_ext.rib.head import AffineBatchNorm

    net = timm.create_model("efficientnet_b0", num_classes=K).eval()
    bn = net.bn1
    assert isinstance(bn, nn.BatchNorm2d) and not isinstance(bn.act, nn.Identity)
    x = torch.randn(2, bn.num_features, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(AffineBatchNorm(bn)(x), bn(x), rtol=1e-5, atol=1e-5)
