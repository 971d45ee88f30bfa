"""Reading MNIST's idx files (plain or gzipped) without torchvision or a download."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

IMAGES = "train-images-idx3-ubyte"
LABELS = "train-labels-idx1-ubyte"
_MAGIC = {IMAGES: 2051, LABELS: 2049}


def _find(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"MNIST file {name} (or {name}.gz) not found in {root}")


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an idx file")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise ValueError(f"{path}: idx magic {magic}, expected {expected_magic}")
    ndim = magic & 0xFF
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {data.size} bytes of data for shape {shape}")
    return data.reshape(shape)


def find_mnist_files(root: str | Path) -> tuple[Path, Path]:
    """The (images, labels) files of MNIST's training split in ``root``; FileNotFoundError
    naming the first one missing."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MNIST folder {root} does not exist")
    return _find(root, IMAGES), _find(root, LABELS)


def load_mnist_train(root: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels uint8 [N]) of MNIST's training split."""
    image_file, label_file = find_mnist_files(root)
    images = read_idx(image_file, _MAGIC[IMAGES])
    labels = read_idx(label_file, _MAGIC[LABELS])
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} MNIST images but {len(labels)} labels")
    return images, labels
