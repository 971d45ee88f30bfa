"""A tiny COCO 2014 folder for the tests: three 20x30 images, a real instances json (polygons, a
crowd RLE, overlaps; image 30 has no annotation) and the masks it must give. ``conftest.coco_root``
writes it; tests import the names from here."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from rib_ext.data import COCO_CLASSES
from rib_ext.data.coco import CATEGORY_TO_INDEX

PERSON, CAR, DOG = 1, 3, 18  # COCO category ids
V_PERSON, V_CAR, V_DOG = 1, 3, 17  # mask values (label index + 1)
H, W = 20, 30
STEMS = {9: "COCO_train2014_000000000009", 25: "COCO_train2014_000000000025", 30: "COCO_train2014_000000000030"}


def rect(x0, y0, x1, y1):
    """A COCO polygon; pycocotools fills it as mask[y0:y1, x0:x1] (checked below)."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def uncompressed_rle(region):
    """COCO's crowd format, written by hand: run lengths of the column-major mask, starting with 0s."""
    flat = region.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"counts": counts, "size": list(region.shape)}


CROWD = np.zeros((H, W), bool)
CROWD[12:20, 20:30] = True

ANNOTATIONS = [
    # image 9: a dog listed before the larger person it stands on, and a crowd of cars overlapping the person
    {"id": 1, "image_id": 9, "category_id": DOG, "segmentation": rect(10, 5, 16, 11), "area": 36.0, "iscrowd": 0, "bbox": [10, 5, 6, 6]},
    {"id": 2, "image_id": 9, "category_id": PERSON, "segmentation": rect(2, 2, 24, 16), "area": 308.0, "iscrowd": 0, "bbox": [2, 2, 22, 14]},
    {"id": 3, "image_id": 9, "category_id": CAR, "segmentation": uncompressed_rle(CROWD), "area": 80.0, "iscrowd": 1, "bbox": [20, 12, 10, 8]},
    # image 25: only a crowd of dogs
    {"id": 4, "image_id": 25, "category_id": DOG, "segmentation": uncompressed_rle(CROWD), "area": 80.0, "iscrowd": 1, "bbox": [20, 12, 10, 8]},
]


def expected_mask_9():
    m = np.zeros((H, W), np.uint8)
    m[CROWD] = 255
    m[2:16, 2:24] = V_PERSON
    m[5:11, 10:16] = V_DOG
    return m


def expected_mask_25():
    m = np.zeros((H, W), np.uint8)
    m[CROWD] = 255
    return m


def write_instances(path, annotations=ANNOTATIONS, categories=None):
    cats = categories or [{"id": c, "name": COCO_CLASSES[CATEGORY_TO_INDEX[c] - 1], "supercategory": "x"} for c in (PERSON, CAR, DOG)]
    images = [{"id": i, "file_name": f"{s}.jpg", "height": H, "width": W} for i, s in STEMS.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))


def write_coco_root(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    (root / "train2014").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem in STEMS.values():
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "train2014" / f"{stem}.jpg")
    write_instances(root / "annotations" / "instances_train2014.json")
    return root
