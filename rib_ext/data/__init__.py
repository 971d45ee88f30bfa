"""Datasets (PASCAL VOC 2012, MS COCO 2014, the embedded demo) and IRN's transforms."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

from rib_ext.config import DemoDataConfig

from .base import SegmentationDataset
from .coco import COCO_CLASSES, COCODataset, semantic_mask
from .demo import CLASS_NAMES as DEMO_CLASS_NAMES
from .demo import generate_demo, render_scene
from .errors import DatasetError
from .images import IGNORE_INDEX, load_label_png, load_rgb, save_index_png, save_label_png, voc_palette
from .transforms import (
    ClassificationDataset,
    InferenceDataset,
    TrainTransform,
    hwc_to_chw,
    multiscale_flip_views,
    normalize,
    random_crop_pad,
    random_hflip,
    random_resize_long,
    resize_long,
)
from .voc import (
    VOC_CLASSES,
    VOCDataset,
    labels_from_mask,
    labels_from_xml,
    load_cls_labels,
    read_id_list,
    write_cls_labels,
)

DATASETS = ("voc", "coco", "demo")


def build_dataset(
    name: str,
    root: Union[str, os.PathLike],
    split_or_list: Union[str, os.PathLike, Sequence[str]] = "train",
    *,
    demo: Optional[DemoDataConfig] = None,
    **kw,
) -> SegmentationDataset:
    """A dataset by name.

    ``split_or_list``: a split name ("train", "val"; VOC also any ImageSets/Segmentation/<name>.txt),
    a list file of ids, or a sequence of ids. ``"demo"`` first generates the demo under ``root``
    (settings ``demo``, default :class:`DemoDataConfig`; skipped if already there) and reads it as
    VOC. Other keywords go to :class:`VOCDataset` (``labels_path``) or :class:`COCODataset`
    (``split``, ``ann_file``, ``image_dir``, ``mask_dir``, ``cache_dir``).
    """
    if name == "voc":
        return VOCDataset(root, split_or_list, **kw)
    if name == "coco":
        return COCODataset(root, split_or_list, **kw)
    if name == "demo":
        generate_demo(root, demo or DemoDataConfig())
        return VOCDataset(root, split_or_list, **kw)
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


__all__ = [
    "COCO_CLASSES", "ClassificationDataset", "COCODataset", "DATASETS", "DEMO_CLASS_NAMES", "DatasetError",
    "IGNORE_INDEX", "InferenceDataset", "SegmentationDataset", "TrainTransform", "VOC_CLASSES", "VOCDataset",
    "build_dataset", "generate_demo", "hwc_to_chw", "labels_from_mask", "labels_from_xml", "load_cls_labels",
    "load_label_png", "load_rgb", "multiscale_flip_views", "normalize", "random_crop_pad", "random_hflip",
    "random_resize_long", "read_id_list", "render_scene", "resize_long", "save_index_png", "save_label_png", "semantic_mask",
    "voc_palette", "write_cls_labels",
]
