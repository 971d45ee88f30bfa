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


# ------------------------------------------------------ RIB's speed and precision settings, each family

_RUNS = {}


def _speed_case(name):
    """(float32 model, pool, 2 targets, the default settings, their maps) of a family, made once."""
    if name not in _RUNS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = adapt(_family(name)).eval()  # float32: bf16 autocast needs float32 weights
        data = _Images()
        pool = OtherImages(data, "cpu", resize_long=(64, 80), crop=64)
        targets = [Target(i, f"t{i}", data.image(i), data.label_matrix()[i], pool_index=i)
                   for i in range(2)]
        cfg = _cfg(pooling="gap")  # gap: see test_engine_maps_equal_the_plain_loop_for_each_family
        _RUNS[name] = (model, pool, targets, cfg, _run(model, pool, targets, cfg))
    return _RUNS[name]


def _run(model, pool, targets, cfg, engine=None, **kw):
    engine = engine or RIBEngine(model, pool, cfg, "cpu", **kw)
    return sorted(engine.run(targets), key=lambda r: r.name)


def _maps(results):
    return [r.maps["high_res"] for r in results]


def _same_steps(a_results, b_results):
    for a, b in zip(a_results, b_results, strict=True):
        assert a.record["steps"] == b.record["steps"] == 2 and a.record["stop"] == b.record["stop"]
        np.testing.assert_array_equal(a.maps["keys"], b.maps["keys"])


def _close_to_float32(ref, got, rel):
    """``got``'s maps within ``rel`` of float32's (relative to the map's max; the maps are
    max-normalised per class) and each class's peak where float32's map peaks too (float32's value
    at ``got``'s peak within ``rel`` of its own max)."""
    _same_steps(ref, got)
    for a, b in zip(_maps(ref), _maps(got)):
        assert a.dtype == b.dtype == np.float32
        assert a.max() > 0  # a map to compare (a zero map would pass anything)
        err = np.abs(a - b).max() / np.abs(a).max()
        assert err < rel, err
        for c in range(a.shape[0]):
            assert a[c].ravel()[b[c].argmax()] >= (1 - rel) * a[c].max()


@pytest.mark.parametrize("name", ENGINE_FAMILIES)
def test_exact_speed_settings_keep_each_familys_maps(name):
    """The settings that change how the work is scheduled, not what is computed, on every family
    the engine serves: against the defaults (float32, G 2, loop head, early reads, no prefetch, the
    CPU's per-parameter update)."""
    model, pool, targets, cfg, ref = _speed_case(name)
    bitwise = {
        # each image's passes and update are its own: a group changes nothing of them
        "group_size 1": dict(group_size=1),
        "prefetch on": dict(prefetch="on"),  # the same draws, built in a thread
    }
    for what, change in bitwise.items():
        got = _run(model, pool, targets, cfg.replace(**change))
        _same_steps(ref, got)
        for a, b in zip(_maps(ref), _maps(got)):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}: {what}")
    # group_size 0 (automatic) is 1 on the CPU
    auto = RIBEngine(model, pool, cfg.replace(group_size=0), "cpu")
    for a, b in zip(_maps(ref), _maps(_run(model, pool, targets, None, engine=auto))):
        np.testing.assert_array_equal(a, b, err_msg=f"{name}: group_size 0")
    assert auto.group_size == 1
    # Late reads (CUDA's read_lag 1: the stops decided on the device, the update masked) and the
    # whole-group foreach update (CUDA's foreach_update; the CPU updates per parameter): the same
    # operations per element, bit for bit, as their docstrings promise.
    late = _run(model, pool, targets, cfg, read_lag=1)
    foreach = RIBEngine(model, pool, cfg, "cpu")
    assert not foreach.foreach
    foreach.foreach = True  # as on CUDA
    for what, got in (("read_lag 1", late), ("foreach update", _run(model, pool, targets, cfg,
                                                                    engine=foreach))):
        _same_steps(ref, got)
        for a, b in zip(_maps(ref), _maps(got)):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}: {what}")
    # vmap in float32: the group's other-image pass as one batched call computes the same sums in
    # another order (vmap's grouped convolutions / batched matmuls), so not bit for bit, which the
    # code does not promise: float32 rounding of a max-normalised map, observed <= 3e-7 on these
    # families; 1e-5 is a tight bound above that.
    vmap = _run(model, pool, targets, cfg.replace(head_batching="vmap"))
    _same_steps(ref, vmap)
    for a, b in zip(_maps(ref), _maps(vmap)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5, err_msg=f"{name}: vmap")
    # GNDRP pooling (the fused operator; the tests above pool by averaging) runs on the family,
    # and a group of 2 gives each image what it gets alone, bit for bit.
    gndrp = cfg.replace(pooling="gndrp")
    grouped, alone = _run(model, pool, targets, gndrp), _run(model, pool, targets, gndrp.replace(group_size=1))
    _same_steps(grouped, alone)
    for a, b in zip(_maps(grouped), _maps(alone)):
        assert np.isfinite(a).all()
        np.testing.assert_array_equal(a, b, err_msg=f"{name}: gndrp, group 2 and alone")


@pytest.mark.parametrize("name", ENGINE_FAMILIES)
def test_approximate_speed_settings_stay_close_to_float32_on_each_family(name):
    """bf16 (autocast; on the loop head and the vmap head), the folded stem and channels_last on
    every family the engine serves, against the float32 defaults."""
    model, pool, targets, cfg, ref = _speed_case(name)
    # bf16 keeps 8 bits of mantissa (rounding 2**-8 ~ 0.4% per operation), partly cancelling over
    # the network: observed <= 0.5% of the map's max on these families after 2 steps. 3% is six
    # times that: a map further off than that is not bf16's rounding but another computation.
    bf16 = _run(model, pool, targets, cfg.replace(precision="bf16"))
    _close_to_float32(ref, bf16, rel=0.03)
    assert any(not np.array_equal(a, b) for a, b in zip(_maps(ref), _maps(bf16)))  # bf16 ran
    # The vmap head in bf16 (batch norms as their float32 affine maps, every convolution in bf16
    # as autocast casts it outside vmap): close to float32 as the loop head is, and to the loop
    # head's bf16 maps within bf16's rounding (equal where only convolutions and batch norms
    # run; a ViT's LayerNorm and attention round differently inside vmap, observed 2e-3).
    bf16_vmap = _run(model, pool, targets, cfg.replace(precision="bf16", head_batching="vmap"))
    _close_to_float32(ref, bf16_vmap, rel=0.03)
    for a, b in zip(_maps(bf16), _maps(bf16_vmap)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-2)
    # The folded stem and channels_last change float32 rounding only (observed <= 1e-6 of the
    # map's max): 1e-4, the bound the engine's own tests hold CAMNet to.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a stem without batch norms: tested below
        folded = _run(model, pool, targets, cfg.replace(fold_stem=True))
    _close_to_float32(ref, folded, rel=1e-4)
    _close_to_float32(ref, _run(model, pool, targets, cfg.replace(channels_last=True)), rel=1e-4)


def test_fold_stem_keeps_the_activation_of_timms_batch_norm():
    """timm's BatchNormAct2d holds its activation: the fold keeps it (it once became the identity,
    a RegNet's stem without its ReLUs)."""
    from rib_ext.precision import fold_batch_norms

    torch.manual_seed(0)
    stem = adapt(timm.create_model("regnetx_002", num_classes=K)).frozen.double().eval()
    for m in stem.modules():  # batch statistics that make the fold do something
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 1.5)
    assert any(isinstance(m, nn.BatchNorm2d) and isinstance(getattr(m, "act", None), nn.ReLU)
               for m in stem.modules())
    folded = fold_batch_norms(stem)
    x = torch.randn(2, 3, 64, 72, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), stem(x), rtol=0, atol=1e-10)


def test_fold_stem_refuses_or_warns_naming_the_family_and_the_setting():
    data = _Images(n=2)
    pool = OtherImages(data, "cpu", resize_long=(64, 80), crop=64)
    cfg = _cfg(fold_stem=True)
    # timm's EfficientNet names its blocks' batch norms bn1/bn2 after conv_dw/conv_pw: not a pair
    # the fold knows, so the folded copy would not be the stem.
    # A setting the user chose: the pipeline's error types (an `error: ...` line, no traceback).
    from rib_ext.pipeline import user_error_types

    with pytest.raises(user_error_types(), match=r"rib.fold_stem cannot fold the efficientnet model's stem.*"
                                                 r"fold_stem=False"):
        RIBEngine(adapt(timm.create_model("efficientnet_b0", num_classes=K)), pool, cfg, "cpu")
    # ConvNeXt's stem has no batch norm: nothing to fold, said so, and the engine runs.
    with pytest.warns(UserWarning, match="rib.fold_stem: the convnext model's stem holds no batch norm"):
        RIBEngine(adapt(timm.create_model("convnext_atto", num_classes=K)), pool, cfg, "cpu")
    # A stem it folds says nothing (torchvision's ResNet: conv1 + bn1 as steps of the Chain).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = RIBEngine(adapt(tvm.resnet18(num_classes=K)), pool, cfg, "cpu")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in engine.stem.modules())


@pytest.mark.parametrize("name", ["tv_resnet18", pytest.param("timm_deit_tiny_avg", marks=SLOW)])
def test_api_runs_the_bf16_vmap_head_and_returns_float32_maps_on_the_device(name):
    """A CNN and a ViT through rib_ext.RIB with bf16 and the vmap head (a group of 2)."""
    import rib_ext

    data = _Images(n=6)
    images, labels = [data.image(i) for i in range(3)], data.label_matrix()[:3]
    others = ([data.image(i) for i in range(6)], data.label_matrix())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _family(name)  # float32 weights: bf16 autocast casts them
    # Average pooling: GNDRP keeps the locations below tau of a map's max, a threshold that bf16's
    # rounding moves locations across where a random head's logits are near 0 (one image's map
    # moved by 7.7% under GNDRP, in the loop head's bf16 as in the vmap head's, which were equal).
    fast = rib_ext.RIB(model, cfg=_cfg(pooling="gap", precision="bf16", head_batching="vmap"))
    plain = rib_ext.RIB(model, cfg=_cfg(pooling="gap"))
    assert fast.cfg.group_size == 2  # the vmap head runs for a group of more than one
    device = next(model.parameters()).device
    got, want = fast.maps(images, labels, others=others), plain.maps(images, labels, others=others)
    assert [r["steps"] for r in fast.records] == [2, 2, 2]
    for m, w, lab in zip(got, want, labels):
        assert m["high_res"].dtype == m["cam"].dtype == torch.float32
        assert m["high_res"].device == device
        assert m["keys"].tolist() == np.flatnonzero(lab).tolist()
        # bf16's rounding of a max-normalised map (see the engine tests above: 3%)
        torch.testing.assert_close(m["high_res"], w["high_res"], rtol=0, atol=0.03)
        assert not torch.equal(m["high_res"], w["high_res"])  # bf16 ran
