"""A classifier RIB can adapt, from the networks researchers already have.

The protocol (:class:`CAMClassifier`) is three parts:

- ``frozen``: the stem, never trained; its output is computed once per image and shared;
- ``body``: the part RIB adapts, from the stem's output to a feature map ``f`` [N, C, h, w];
- ``classifier``: a linear classifier applied at every location of ``f``, the class activation map
  ``CAM = classifier(f)`` [N, K, h, w],

with the contract ``GAP(CAM) == logits``: the model's logits are the spatial mean of its CAM.
Every network whose head is "average pooling, then a linear layer" keeps that contract exactly
when its linear layer is applied per location instead of after the pooling (the two commute). A
normalisation between the pooling and the linear layer (ConvNeXt's LayerNorm, a ViT's ``fc_norm``)
is applied per location with the statistics of the pooled vector: an affine map of each location,
so the contract still holds exactly.

:func:`adapt` builds the protocol from a torchvision or timm model: ResNet / ResNeXt / Wide ResNet,
ConvNeXt, EfficientNet / EfficientNetV2, MobileNetV3, RegNet, vision transformers (ViT, DeiT), and
any other timm model through ``forward_features`` and ``get_classifier()`` (all of it adapted).
Where the split between frozen and adapted falls is a layer name (``split="layer3"``); the default
is the first layer that brings the output stride to 16, the paper's choice for ResNet-50 (stages 3
and 4 adapted), and the second half of the blocks for a transformer. Batch norms keep their running
statistics and stochastic layers (dropout, stochastic depth) stay off in training too: the recipe
the authors' ResNet-50 follows.

Two families change their head to fit the protocol, and say so with a warning: MobileNetV3's
hidden layer after the pooling runs per location (its logits become the mean of per-location
logits), and a ViT that classifies its class token gets the head on every patch token. Fine-tune
such a model on the dataset (the pipeline's train_cam does) before adapting it.

A model that fits none of this (no linear head over average-pooled features) is refused with the
reason and how to wrap it: give :class:`CAMClassifier` your own ``frozen``, ``body`` and a
:class:`LinearCAMHead`.
"""
from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class AdapterError(ValueError):
    """A model that cannot be adapted, or a split that names no layer of it."""


# ------------------------------------------------------------------------------------- the head

class LinearCAMHead(nn.Module):
    """A linear classifier over pooled features, applied at every location.

    ``weight`` [K, C, 1, 1] and ``bias`` [K] (or None) are the linear layer's; ``norm`` optionally
    describes a LayerNorm that the model applies to the pooled vector before the linear layer
    (``(weight, bias, eps)``, each of C channels). Input ``f`` [N, C, h, w]; output the CAM
    [N, K, h, w] whose spatial mean is the model's logits.
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 norm: Optional[Tuple[Optional[torch.Tensor], Optional[torch.Tensor], float]] = None):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().reshape(weight.shape[0], -1, 1, 1))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.norm_eps = None
        if norm is not None:
            g, b, eps = norm
            c = self.weight.shape[1]
            self.norm_weight = nn.Parameter(torch.ones(c) if g is None else g.detach().clone())
            self.norm_bias = nn.Parameter(torch.zeros(c) if b is None else b.detach().clone())
            self.norm_eps = float(eps)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if self.norm_eps is not None:
            # LayerNorm(mean_u f(u)) = mean_u of the affine map below, whose statistics come from
            # the pooled vector: applying it per location keeps GAP(CAM) == logits.
            pooled = f.mean(dim=(2, 3))
            mu = pooled.mean(dim=1)[:, None, None, None]
            sd = torch.sqrt(pooled.var(dim=1, unbiased=False) + self.norm_eps)[:, None, None, None]
            f = (f - mu) / sd * self.norm_weight[None, :, None, None] + self.norm_bias[None, :, None, None]
        return F.conv2d(f, self.weight, self.bias)


# ---------------------------------------------------------------------------------- the network

class Chain(nn.Module):
    """Named steps run one after the other (a ``nn.Sequential`` whose names may hold dots)."""

    def __init__(self, steps: Sequence[Tuple[str, nn.Module]]):
        super().__init__()
        self.names = [n for n, _ in steps]
        # A Sequential (not a ModuleList; the same state-dict keys): the stem's batch-norm fold
        # (fold_stem, rib_ext.precision.fold_batch_norms) finds a (Conv2d, BatchNorm2d) pair of
        # steps, a ResNet's conv1 and bn1, only among a Sequential's children.
        self.steps = nn.Sequential(*[m for _, m in steps])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _as_model_dtype(self, x)
        for step in self.steps:
            x = step(x)
        return x


def _as_model_dtype(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """float32 images into a float64 model (the exactness tests run the networks in float64);
    any other combination as it comes (autocast decides under bf16)."""
    p = next(module.parameters(), None)
    if p is not None and p.dtype == torch.float64 and x.dtype == torch.float32:
        return x.double()
    return x


_STOCHASTIC = (nn.Dropout, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def _is_stochastic(m: nn.Module) -> bool:
    name = type(m).__name__
    return isinstance(m, _STOCHASTIC) or name in ("StochasticDepth", "DropPath", "PatchDropout")


class CAMClassifier(nn.Module):
    """The protocol RIB adapts: ``frozen`` -> ``body`` -> ``classifier`` per location (the CAM).

    ``forward(x)`` gives the logits, ``GAP(cam(x))``. The methods RIB, make_cam and the trainers
    use: ``stem(x)`` (the frozen part, no gradient), ``head_features(x2)``, ``cam(x)``,
    ``trainable_parameters()`` -> (body, classifier) for the two learning rates.
    """

    def __init__(self, frozen: nn.Module, body: nn.Module, classifier: LinearCAMHead,
                 family: str = "custom", split: Optional[str] = None):
        super().__init__()
        self.frozen, self.body, self.classifier = frozen, body, classifier
        self.family, self.split = family, split
        self.model_spec: Optional[str] = None  # "timm:NAME" etc. when built by name (checkpoints)
        for p in self.frozen.parameters():
            p.requires_grad_(False)

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def train(self, mode: bool = True) -> "CAMClassifier":
        super().train(mode)
        # Batch norms keep their running statistics and stochastic layers stay off, in training
        # too: RIB's steps and the frozen stem depend on nothing but the weights.
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) or _is_stochastic(m):
                m.eval()
        self.frozen.eval()
        return self

    def sync_batch_stats(self, on: bool) -> None:
        """Nothing to synchronise across ranks: the batch norms keep their running statistics."""

    def head_modules(self) -> "OrderedDict[str, nn.Module]":
        """The adapted modules before the classifier, by the name RIB's engine gives them."""
        return OrderedDict(body=self.body)

    def stem_module(self) -> nn.Module:
        return self.frozen

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.frozen(x).detach()

    def head_features(self, x2: torch.Tensor) -> torch.Tensor:
        return self.body(x2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_features(self.stem(x))

    def cam_from_features(self, feats: torch.Tensor) -> torch.Tensor:
        return self.classifier(feats)

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_from_features(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam(x).mean(dim=(2, 3))

    def trainable_parameters(self) -> Tuple[List[nn.Parameter], List[nn.Parameter]]:
        return list(self.body.parameters()), list(self.classifier.parameters())


# ------------------------------------------------------------------------------- transformers

def pack_tokens(tokens: torch.Tensor, prefix: int, grid: Tuple[int, int]) -> torch.Tensor:
    """Tokens [N, prefix + h*w, D] as one map [N, D, r + h, w]: the first ``r = ceil(prefix/w)``
    rows hold the prefix tokens (class token, registers; zero padded), the rest the patch grid.
    RIB's engine keeps stem outputs as maps; the grid's shape travels with it this way."""
    n, t, d = tokens.shape
    h, w = grid
    rows = -(-prefix // w) if prefix else 0
    head = tokens[:, :prefix]
    if rows:
        head = torch.cat([head, head.new_zeros(n, rows * w - prefix, d)], dim=1)
    return torch.cat([head, tokens[:, prefix:]], dim=1).transpose(1, 2).reshape(n, d, rows + h, w)


def unpack_tokens(packed: torch.Tensor, prefix: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """The inverse of :func:`pack_tokens`: (tokens [N, prefix + h*w, D], (h, w))."""
    n, d, rh, w = packed.shape
    rows = -(-prefix // w) if prefix else 0
    flat = packed.reshape(n, d, rh * w).transpose(1, 2)
    return torch.cat([flat[:, :prefix], flat[:, rows * w:]], dim=1), (rh - rows, w)


class _ViTStem(nn.Module):
    """Patch embedding, prefix tokens, position embedding resampled to the image's grid, and the
    frozen blocks; the output packed as a map (:func:`pack_tokens`)."""

    def __init__(self, embed: Callable, add_positions: Callable, blocks: Sequence[nn.Module],
                 prefix: int, modules: Sequence[nn.Module]):
        super().__init__()
        self._embed, self._add_positions = embed, add_positions
        self.parts = nn.ModuleList(list(modules))
        self.blocks = nn.ModuleList(list(blocks))
        self.prefix = prefix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid_map = self._embed(_as_model_dtype(self, x))  # [N, D, h, w]
        grid = tuple(grid_map.shape[2:])
        tokens = self._add_positions(grid_map.flatten(2).transpose(1, 2), grid)
        for block in self.blocks:
            tokens = block(tokens)
        return pack_tokens(tokens, self.prefix, grid)


class _ViTBody(nn.Module):
    """The adapted blocks and the final norm; the patch tokens (prefix dropped) as a map."""

    def __init__(self, blocks: Sequence[nn.Module], norm: nn.Module, prefix: int):
        super().__init__()
        self.blocks = nn.ModuleList(list(blocks))
        self.norm = norm
        self.prefix = prefix

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        tokens, (h, w) = unpack_tokens(packed, self.prefix)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)[:, self.prefix:]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


def _resample_positions(pos: torch.Tensor, prefix: int, old: Tuple[int, int],
                        new: Tuple[int, int]) -> torch.Tensor:
    """Position embeddings [1, prefix + h0*w0, D] for a grid of ``new`` (bicubic, as timm does)."""
    if tuple(new) == tuple(old):
        return pos
    head, grid = pos[:, :prefix], pos[:, prefix:]
    d = grid.shape[-1]
    grid = grid.reshape(1, old[0], old[1], d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(new), mode="bicubic", align_corners=False,
                         antialias=True).to(pos.dtype)
    return torch.cat([head, grid.permute(0, 2, 3, 1).reshape(1, -1, d)], dim=1)


# ----------------------------------------------------------------------------------- families

def _linear(head: nn.Module, what: str):
    """A linear layer, or a 1x1 convolution (timm's ResNetV2), with ``weight`` and ``bias``."""
    if isinstance(head, nn.Linear):
        return head
    if isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1) and head.groups == 1:
        return head
    raise AdapterError(f"{what} is {type(head).__name__}, not a linear layer: RIB needs a linear "
                       f"classifier over average-pooled features. Wrap your model as "
                       f"rib_ext.models.CAMClassifier(frozen, body, LinearCAMHead(weight, bias)).")


def _check_avg_pool(pool: nn.Module, what: str) -> None:
    kind = getattr(pool, "pool_type", None)
    ok = isinstance(pool, (nn.AdaptiveAvgPool2d,)) or kind == "avg"
    if isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size not in (1, (1, 1)):
        ok = False
    if not ok:
        raise AdapterError(f"{what} pools with {pool!r}, not a global average: the CAM's mean is "
                           f"the logit only under average pooling. Build the model with average "
                           f"pooling (timm: global_pool='avg') or wrap it as "
                           f"rib_ext.models.CAMClassifier(frozen, body, LinearCAMHead(...)).")


def _norm_of(m: nn.Module) -> Optional[tuple]:
    if m is None or isinstance(m, nn.Identity):
        return None
    if isinstance(m, nn.LayerNorm) or type(m).__name__ in ("LayerNorm2d", "LayerNorm"):
        return (m.weight, m.bias, m.eps)
    raise AdapterError(f"the head normalises the pooled features with {type(m).__name__}: only "
                       f"a LayerNorm there can be applied per location; wrap your model as "
                       f"rib_ext.models.CAMClassifier(frozen, body, LinearCAMHead(...)).")


def _steps_torchvision(model: nn.Module) -> Tuple[list, LinearCAMHead, str]:
    """(named steps to the feature map, the head, the family) of a torchvision classifier."""
    import torchvision.models as tvm

    if isinstance(model, tvm.ResNet):
        _check_avg_pool(model.avgpool, "ResNet")
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        fc = _linear(model.fc, "ResNet.fc")
        return [(n, getattr(model, n)) for n in names], LinearCAMHead(fc.weight, fc.bias), "resnet"
    if isinstance(model, tvm.RegNet):
        _check_avg_pool(model.avgpool, "RegNet")
        steps = [("stem", model.stem)] + [(f"trunk_output.{n}", m)
                                          for n, m in model.trunk_output.named_children()]
        fc = _linear(model.fc, "RegNet.fc")
        return steps, LinearCAMHead(fc.weight, fc.bias), "regnet"
    if isinstance(model, tvm.ConvNeXt):
        _check_avg_pool(model.avgpool, "ConvNeXt")
        norm, fc = model.classifier[0], _linear(model.classifier[-1], "ConvNeXt.classifier[-1]")
        steps = [(f"features.{n}", m) for n, m in model.features.named_children()]
        return steps, LinearCAMHead(fc.weight, fc.bias, _norm_of(norm)), "convnext"
    if isinstance(model, tvm.EfficientNet):
        _check_avg_pool(model.avgpool, "EfficientNet")
        fc = _linear(model.classifier[-1], "EfficientNet.classifier[-1]")
        steps = [(f"features.{n}", m) for n, m in model.features.named_children()]
        return steps, LinearCAMHead(fc.weight, fc.bias), "efficientnet"
    if isinstance(model, tvm.MobileNetV3):
        _check_avg_pool(model.avgpool, "MobileNetV3")
        hidden, act = _linear(model.classifier[0], "MobileNetV3.classifier[0]"), model.classifier[1]
        fc = _linear(model.classifier[-1], "MobileNetV3.classifier[-1]")
        steps = [(f"features.{n}", m) for n, m in model.features.named_children()]
        steps.append(("classifier.0", _conv1x1(hidden)))
        steps.append(("classifier.1", act))
        return steps, LinearCAMHead(fc.weight, fc.bias), "mobilenetv3"
    return None


def _conv1x1(linear: nn.Linear) -> nn.Conv2d:
    """A linear layer applied at every location (MobileNetV3's hidden layer moved before the
    pooling)."""
    conv = nn.Conv2d(linear.in_features, linear.out_features, 1, bias=linear.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(linear.weight[:, :, None, None])
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


def _steps_timm(model: nn.Module):
    """(steps, head, family) of a timm CNN; None for a model this does not know by name."""
    name = type(model).__name__
    if name in ("ResNet",) and hasattr(model, "layer4"):
        _check_avg_pool(model.global_pool, "timm ResNet")
        names = ["conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        fc = _linear(model.fc, "timm ResNet.fc")
        return [(n, getattr(model, n)) for n in names], LinearCAMHead(fc.weight, fc.bias), "resnet"
    if name == "ConvNeXt":
        head = model.head
        _check_avg_pool(head.global_pool, "timm ConvNeXt")
        if not isinstance(getattr(head, "pre_logits", nn.Identity()), nn.Identity):
            raise AdapterError("timm ConvNeXt with a hidden head layer (head_hidden_size): the "
                               "head is not linear; build it without one")
        fc = _linear(head.fc, "timm ConvNeXt.head.fc")
        steps = [("stem", model.stem)] + [(f"stages.{n}", m) for n, m in model.stages.named_children()]
        steps.append(("norm_pre", model.norm_pre))
        return steps, LinearCAMHead(fc.weight, fc.bias, _norm_of(head.norm)), "convnext"
    if name == "EfficientNet":
        _check_avg_pool(model.global_pool, "timm EfficientNet")
        fc = _linear(model.classifier, "timm EfficientNet.classifier")
        steps = [("conv_stem", model.conv_stem), ("bn1", model.bn1)]
        steps += [(f"blocks.{n}", m) for n, m in model.blocks.named_children()]
        steps += [("conv_head", model.conv_head), ("bn2", model.bn2)]
        return steps, LinearCAMHead(fc.weight, fc.bias), "efficientnet"
    if name == "MobileNetV3":
        _check_avg_pool(model.global_pool, "timm MobileNetV3")
        fc = _linear(model.classifier, "timm MobileNetV3.classifier")
        steps = [("conv_stem", model.conv_stem), ("bn1", model.bn1)]
        steps += [(f"blocks.{n}", m) for n, m in model.blocks.named_children()]
        steps += [("conv_head", model.conv_head), ("norm_head", model.norm_head), ("act2", model.act2)]
        return steps, LinearCAMHead(fc.weight, fc.bias), "mobilenetv3"
    if name == "RegNet":
        head = model.head
        _check_avg_pool(head.global_pool, "timm RegNet")
        fc = _linear(head.fc, "timm RegNet.head.fc")
        steps = [("stem", model.stem)] + [(f"s{i}", getattr(model, f"s{i}")) for i in range(1, 5)]
        steps.append(("final_conv", model.final_conv))
        return steps, LinearCAMHead(fc.weight, fc.bias), "regnet"
    return None


def _split_index(steps: list, split: Optional[str], what: str) -> int:
    names = [n for n, _ in steps]
    if split is not None:
        if split not in names:
            raise AdapterError(f"split={split!r} names no layer of this {what}; its layers, in "
                               f"order: {', '.join(names)}")
        return names.index(split)
    # The default: the first layer that brings the output stride to 16 (ResNet-50: layer3).
    p = next(_params(steps))
    x = torch.zeros(1, 3, 64, 64, dtype=p.dtype, device=p.device)
    with torch.no_grad():
        for i, (_, m) in enumerate(steps):
            x = m(x)
            if x.dim() == 4 and 64 // max(1, x.shape[-1]) >= 16:
                return i
    return 0


def _params(steps):
    for _, m in steps:
        for p in m.parameters():
            yield p


def _vit(model: nn.Module, split: Optional[str]):
    """(stem, body, head, family, split name, exact) of a timm or torchvision vision transformer."""
    import torchvision.models as tvm

    if isinstance(model, tvm.VisionTransformer):
        blocks = list(model.encoder.layers.children())
        names = [f"encoder.layers.{i}" for i in range(len(blocks))]
        prefix, pool, norm = 1, "token", model.encoder.ln
        fc = _linear(model.heads[-1], "VisionTransformer.heads[-1]")
        head = LinearCAMHead(fc.weight, fc.bias)
        g = model.image_size // model.patch_size
        pos, cls, proj, drop = model.encoder.pos_embedding, model.class_token, model.conv_proj, \
            model.encoder.dropout

        def embed(x):
            return proj(x)

        def add_positions(tokens, grid):
            tokens = torch.cat([cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
            return drop(tokens + _resample_positions(pos, 1, (g, g), grid))

        parts = [proj, drop]
        frozen_params = [pos, cls]
    else:  # timm VisionTransformer (ViT, DeiT)
        blocks = list(model.blocks.children())
        names = [f"blocks.{i}" for i in range(len(blocks))]
        prefix, pool = model.num_prefix_tokens, model.global_pool
        fc = _linear(model.head, "timm VisionTransformer.head")
        if pool == "avg":
            head = LinearCAMHead(fc.weight, fc.bias, _norm_of(model.fc_norm))
            norm = model.norm
        elif pool == "token":
            head, norm = LinearCAMHead(fc.weight, fc.bias), model.norm
        else:
            raise AdapterError(f"timm VisionTransformer with global_pool={pool!r}: only 'avg' or "
                               f"'token' (the head then applied per patch token) can be adapted")
        pe = model.patch_embed
        old = tuple(pe.grid_size)
        no_embed_class = getattr(model, "no_embed_class", False)

        def embed(x):
            y = pe.proj(x)
            return pe.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

        def add_positions(tokens, grid):
            extra = [t.expand(tokens.shape[0], -1, -1) for t in (model.cls_token, model.reg_token)
                     if t is not None]
            pos = model.pos_embed
            if pos is None:
                out = torch.cat(extra + [tokens], dim=1)
            elif no_embed_class:
                out = torch.cat(extra + [tokens + _resample_positions(pos, 0, old, grid)], dim=1)
            else:
                out = torch.cat(extra + [tokens], dim=1) + _resample_positions(pos, prefix, old, grid)
            return model.norm_pre(model.patch_drop(model.pos_drop(out)))

        parts = [pe, model.pos_drop, model.patch_drop, model.norm_pre]
        frozen_params = [p for p in (model.cls_token, model.reg_token, model.pos_embed) if p is not None]
    if split is None:
        k = len(blocks) // 2
    elif split in names:
        k = names.index(split)
    else:
        raise AdapterError(f"split={split!r} names no block of this transformer; its blocks: "
                           f"{names[0]} .. {names[-1]}")
    stem = _ViTStem(embed, add_positions, blocks[:k], prefix, parts)
    stem.frozen_tensors = nn.ParameterList(frozen_params)
    body = _ViTBody(blocks[k:], norm, prefix)
    return stem, body, head, "vit", names[k] if k < len(names) else None, pool == "avg"


def _is_vit(model: nn.Module) -> bool:
    import torchvision.models as tvm

    return isinstance(model, tvm.VisionTransformer) or type(model).__name__ == "VisionTransformer"


def adapt(model: nn.Module, split: Optional[str] = None, check: bool = True) -> CAMClassifier:
    """The :class:`CAMClassifier` of a torchvision or timm classifier (or the model itself when it
    already follows the protocol: a ``CAMClassifier`` or the package's ``CAMNet``).

    ``split`` names the first adapted layer (see the module docs for the default). The result
    shares no weights with ``model`` (its layers are copied). With ``check``, the contract
    ``GAP(CAM) == logits`` is verified on a probe image against ``model``'s own logits where the
    adapter keeps the head exact.
    """
    import copy

    if isinstance(model, CAMClassifier) or hasattr(model, "stage3"):
        if split is not None:
            raise AdapterError(f"split={split!r}: this model already follows the protocol; its "
                               f"split is fixed")
        return model
    original = model
    model = copy.deepcopy(model).eval()
    exact = True
    if _is_vit(model):
        frozen, body, head, family, split_name, exact = _vit(model, split)
    else:
        steps, head, family = (_steps_torchvision(model) or _steps_timm(model)
                               or _generic_timm(model))
        # MobileNetV3's hidden layer after the pooling (torchvision's classifier[0], timm's
        # conv_head) runs per location here: its logits change.
        exact = family != "mobilenetv3"
        k = _split_index(steps, split, family)
        split_name = steps[k][0]
        frozen, body = Chain(steps[:k]), Chain(steps[k:])
    adapted = CAMClassifier(frozen, body, head, family=family, split=split_name)
    if not exact:
        warnings.warn(f"{type(original).__name__}: its head is not 'average pool, then linear' "
                      f"({'a hidden layer after the pooling' if family != 'vit' else 'the class token'}"
                      f"); the adapter applies it per location, so its logits are the mean of "
                      f"per-location logits, not the original model's: fine-tune it (train_cam) "
                      f"before RIB", stacklevel=2)
    elif check:
        check_contract(adapted, original)
    return adapted


def _generic_timm(model: nn.Module):
    """Any timm model with ``forward_features`` and a linear ``get_classifier()`` over average
    pooling: the whole feature extractor is adapted (no layer split known)."""
    if not (hasattr(model, "forward_features") and hasattr(model, "get_classifier")):
        raise AdapterError(f"{type(model).__name__}: not a torchvision or timm classifier this "
                           f"package knows, and it has no forward_features / get_classifier(); "
                           f"wrap it as rib_ext.models.CAMClassifier(frozen, body, "
                           f"LinearCAMHead(weight, bias))")
    pool = getattr(model, "global_pool", None)
    if pool is None and hasattr(model, "head"):
        pool = getattr(model.head, "global_pool", None)
    if pool is None:
        raise AdapterError(f"{type(model).__name__}: no global pooling found (global_pool); wrap "
                           f"it as rib_ext.models.CAMClassifier(frozen, body, LinearCAMHead(...))")
    _check_avg_pool(pool, type(model).__name__)
    fc = _linear(model.get_classifier(), f"{type(model).__name__}.get_classifier()")

    class _Features(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.forward_features(x)

    return [("forward_features", _Features(model))], LinearCAMHead(fc.weight, fc.bias), "timm"


def _native_size(model: nn.Module) -> Optional[int]:
    """The one input size a transformer accepts (timm's strict size, torchvision's image_size)."""
    size = getattr(model, "image_size", None)
    pe = getattr(model, "patch_embed", None)
    if pe is not None and getattr(pe, "strict_img_size", False):
        size = pe.img_size[0]
    return size


def check_contract(adapted: CAMClassifier, model: nn.Module, size: Optional[int] = None,
                   atol: float = 1e-4) -> None:
    """Raise :class:`AdapterError` unless ``GAP(adapted.cam(x))`` equals ``model(x)`` on a probe."""
    size = size or _native_size(model) or 64
    p = next(adapted.parameters())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, size, size, generator=gen).to(p.device, p.dtype)
    was = model.training
    model.eval()
    adapted.eval()
    with torch.no_grad():
        want = model(x).flatten(1)
        got = adapted(x)
    model.train(was)
    if want.shape != got.shape or not torch.allclose(got, want, atol=atol, rtol=1e-3):
        err = (got - want).abs().max().item() if want.shape == got.shape else float("nan")
        raise AdapterError(f"{type(model).__name__}: the mean of the adapted CAM differs from the "
                           f"model's logits (max |diff| {err:.3g}): its head is not 'average pool, "
                           f"then linear'; wrap it as rib_ext.models.CAMClassifier(...)")
