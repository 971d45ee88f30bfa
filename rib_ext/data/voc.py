"""PASCAL VOC 2012 in its usual on-disk layout, plus IRN's ``cls_labels.npy`` format.

    root/JPEGImages/<id>.jpg
    root/Annotations/<id>.xml              (object names give the image-level labels)
    root/SegmentationClass/<id>.png        (palette PNG: 0 bg, 1..20 classes, 255 object borders)
    root/SegmentationClassAug/<id>.png     (optional, the SBD-augmented masks)
    root/ImageSets/Segmentation/{train,val}.txt, or any list file of ids (train_aug.txt, ...)
    root/cls_labels.npy                    (optional, IRN's labels file)
    root/classes.txt                       (optional, one foreground class per line; else VOC's 20)
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from rib_ext.io import save_json, save_npy, save_text

from .base import MAX_PIXELS, SegmentationDataset, drop_unlabelled, preview
from .errors import DatasetError
from .idlists import check_ids, id_key, id_keys, read_id_list  # noqa: F401  (the package's names)
from .images import IGNORE_INDEX, load_label_png

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

SPLIT_DIR = Path("ImageSets") / "Segmentation"
IdsOrList = Union[str, os.PathLike, Sequence[str]]


# ---------------------------------------------------------------------------------------------
# Class names and id lists


def read_class_names(root: str | os.PathLike) -> tuple[str, ...]:
    """``root/classes.txt`` (one foreground name per line) if present, else :data:`VOC_CLASSES`."""
    path = Path(root) / "classes.txt"
    if not path.exists():
        return VOC_CLASSES
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not names:
        raise DatasetError(f"{path}: class list is empty")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DatasetError(f"{path}: duplicated class name(s) {preview(dupes)}")
    return tuple(names)


def check_unique_ids(ids: Sequence[str], where: str) -> None:
    """Ids given in code: valid ids, none twice (:func:`rib_ext.data.idlists.check_ids`)."""
    check_ids(ids, where)


def given_ids(root, ids: Sequence) -> tuple[list[str], str]:
    """A sequence of ids given in code, checked (not empty, no id twice), and its description."""
    ids = [str(i) for i in ids]
    if not ids:
        raise DatasetError(f"{root}: empty id list given")
    where = f"{root} (id list of {len(ids)})"
    check_unique_ids(ids, where)
    return ids, where


def resolve_id_list(root: str | os.PathLike, ids_or_list: IdsOrList) -> tuple[list[str], str]:
    """Ids from a split name ("train" -> root/ImageSets/Segmentation/train.txt), a list file, or a
    sequence of ids; also returns a description of the source for messages."""
    if isinstance(ids_or_list, (str, os.PathLike)):
        path = Path(ids_or_list)
        is_bare_name = len(path.parts) == 1 and not path.suffix
        split_file = Path(root) / SPLIT_DIR / f"{path.name}.txt"
        # A bare name is a split of this root, even if the working folder has a file of that name.
        if is_bare_name and (split_file.is_file() or not path.is_file()):
            path = split_file
        return read_id_list(path), str(path)
    return given_ids(root, ids_or_list)


# ---------------------------------------------------------------------------------------------
# Image-level labels


def labels_from_xml(xml_path: str | os.PathLike, class_names: Sequence[str] = VOC_CLASSES,
                    skipped: Optional[SkippedNames] = None) -> np.ndarray:
    """float32 [K]: 1 for every class named by an ``<object><name>`` (difficult ones included, as
    IRN's label maker does).

    Objects whose name is not in ``class_names`` are skipped, as IRN skips them: their names are
    counted into ``skipped`` when given (the caller warns once for a whole list), else this call
    warns.
    """
    xml_path = Path(xml_path)
    if not xml_path.is_file():
        raise DatasetError(f"{xml_path}: annotation file not found")
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as e:
        raise DatasetError(f"{xml_path}: malformed XML ({e})") from e
    index = {n: k for k, n in enumerate(class_names)}
    labels = np.zeros(len(class_names), dtype=np.float32)
    unknown = Counter()
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name in index:
            labels[index[name]] = 1.0
        else:
            unknown[name] += 1
    if skipped is None:
        warn_unknown_names(SkippedNames(unknown, int(bool(unknown))), str(xml_path), class_names)
    else:
        skipped.add(unknown)
    return labels


class SkippedNames:
    """Objects skipped for an unknown class name, counted over many XML files for one warning."""

    def __init__(self, names: Optional[Counter] = None, files: int = 0):
        self.names = Counter(names or {})
        self.files = files

    def add(self, names: Counter) -> None:
        self.names.update(names)
        self.files += bool(names)


def warn_unknown_names(skipped: SkippedNames, where: str, class_names: Sequence[str]) -> None:
    """One warning for all the objects skipped for an unknown class name (if any)."""
    if not skipped.names:
        return
    names = [f"{n!r} x{c}" for n, c in skipped.names.most_common()]
    warnings.warn(f"{where}: skipped {sum(skipped.names.values())} object(s) in {skipped.files} "
                  f"annotation file(s) whose class name is not in the class list "
                  f"({preview(class_names, 3)}): {preview(names)}", stacklevel=3)


def labels_from_mask(mask: np.ndarray, num_classes: int = len(VOC_CLASSES), where: str = "mask") -> np.ndarray:
    """float32 [K]: 1 for every class value 1..K present in a class-index mask (0 and 255 ignored)."""
    values = np.unique(np.asarray(mask))
    bad = [int(v) for v in values if v != 0 and v != IGNORE_INDEX and not 1 <= v <= num_classes]
    if bad:
        raise DatasetError(f"{where}: mask value(s) {bad[:5]} outside 0, 1..{num_classes}, {IGNORE_INDEX}")
    labels = np.zeros(num_classes, dtype=np.float32)
    fg = values[(values >= 1) & (values <= num_classes)].astype(np.int64)
    labels[fg - 1] = 1.0
    return labels


def load_cls_labels(path: str | os.PathLike) -> dict:
    """IRN's labels file: ``np.save`` of ``{id_key: float32 [K]}``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: labels file not found")
    try:
        obj = np.load(path, allow_pickle=True)
        table = obj.item() if obj.dtype == object and obj.shape == () else None
    except (OSError, ValueError, EOFError) as e:
        raise DatasetError(f"{path}: cannot read labels file ({e})") from e
    if not isinstance(table, dict):
        raise DatasetError(f"{path}: expected np.save of a dict {{id: label vector}}")
    return {k: np.asarray(v, dtype=np.float32) for k, v in table.items()}


def _label_source(root: Path, image_id: str, source: str) -> Path:
    xml = root / "Annotations" / f"{image_id}.xml"
    if source == "xml" or (source == "auto" and xml.is_file()):
        return xml
    mask = find_mask(root, image_id)
    if mask is not None:
        return mask
    if source == "mask":
        raise DatasetError(f"{root}: no mask for {image_id} in SegmentationClass or SegmentationClassAug")
    raise DatasetError(f"{root}: image {image_id} has neither Annotations/{image_id}.xml nor a mask")


def labels_for_id(root: Path, image_id: str, class_names: Sequence[str], source: str = "auto",
                  skipped: Optional[SkippedNames] = None) -> np.ndarray:
    """Labels of one image from its XML ("xml"), its mask ("mask") or XML else mask ("auto")."""
    if source not in ("xml", "mask", "auto"):
        raise ValueError(f"source must be 'xml', 'mask' or 'auto', got {source!r}")
    path = _label_source(root, image_id, source)
    if path.suffix == ".xml":
        return labels_from_xml(path, class_names, skipped)
    return labels_from_mask(load_label_png(path), len(class_names), where=str(path))


LABELS_SOURCE_FORMAT = "rib_ext.cls_labels_source"


def labels_source_path(labels_path: str | os.PathLike) -> Path:
    """The fingerprint file written beside a ``cls_labels.npy`` that :func:`write_cls_labels` made."""
    labels_path = Path(labels_path)
    return labels_path.with_name(labels_path.name + ".source.json")


def _labels_fingerprint(root: Path, ids: Sequence[str], source: str) -> str:
    """Hash of what the labels were computed from: the class list and, per id, the path, size and
    modification time of the XML or mask read (stat only: cheap for VOC's 10k ids)."""
    h = hashlib.sha256()
    classes = root / "classes.txt"
    h.update(classes.read_bytes() if classes.is_file() else b"<VOC classes>")
    for image_id in ids:
        path = _label_source(root, image_id, source)
        st = path.stat()
        h.update(f"\n{image_id} {path.relative_to(root)} {st.st_size} {st.st_mtime_ns}".encode())
    return h.hexdigest()


def write_cls_labels(
    root: str | os.PathLike, ids: Iterable[str], out_path: str | os.PathLike, source: str = "auto"
) -> dict:
    """Build and save IRN's ``cls_labels.npy`` for ``ids``; returns the dict written.

    Beside it goes ``<out>.source.json``, a fingerprint of the files the labels came from: a
    dataset that finds the labels file stale (an XML or mask edited, classes.txt changed) rebuilds
    it (:meth:`VOCDataset`). IRN reads the ``.npy`` unchanged.
    """
    root = Path(root)
    ids = list(ids)
    names = read_class_names(root)
    skipped = SkippedNames()
    keys = id_keys(ids, str(root))
    table = {keys[i]: labels_for_id(root, i, names, source, skipped) for i in ids}
    warn_unknown_names(skipped, str(root), names)
    fingerprint = _labels_fingerprint(root, ids, source)
    save_npy(out_path, table)
    save_json(labels_source_path(out_path), {"format": LABELS_SOURCE_FORMAT, "root": str(root.resolve()),
                                             "source": source, "fingerprint": fingerprint, "ids": ids})
    return table


def stale_labels_file(root: str | os.PathLike, labels_path: str | os.PathLike) -> Optional[dict]:
    """The fingerprint record of a labels file made by :func:`write_cls_labels` whose sources have
    changed since, else None (also None for a labels file with no fingerprint: one supplied by the
    user, which is trusted as it is)."""
    side = labels_source_path(labels_path)
    if not side.is_file():
        return None
    try:
        record = json.loads(side.read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or record.get("format") != LABELS_SOURCE_FORMAT:
        raise DatasetError(f"{side}: not a labels fingerprint file; delete it (and {labels_path} "
                           "if it is not yours) to go on")
    try:
        current = _labels_fingerprint(Path(root), record["ids"], record["source"])
    except DatasetError:  # a source vanished: the file can no longer be trusted either
        current = None
    return None if current == record["fingerprint"] else record


# ---------------------------------------------------------------------------------------------
# Writing (the demo generator and test fixtures use these)


def write_annotation_xml(
    path: str | os.PathLike, image_id: str, size_hw: tuple[int, int], objects: Sequence[tuple[str, tuple]]
) -> None:
    """A VOC-style annotation; ``objects`` are ``(name, (xmin, ymin, xmax, ymax))`` in 1-based pixels."""
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "VOC2012"
    ET.SubElement(ann, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(ann, "size")
    for tag, val in (("width", size_hw[1]), ("height", size_hw[0]), ("depth", 3)):
        ET.SubElement(size, tag).text = str(val)
    ET.SubElement(ann, "segmented").text = "1"
    for name, box in objects:
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bnd = ET.SubElement(obj, "bndbox")
        for tag, val in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bnd, tag).text = str(int(val))
    ET.indent(ann)
    save_text(path, ET.tostring(ann, encoding="unicode") + "\n")


# ---------------------------------------------------------------------------------------------
# The dataset


def find_mask(root: Path, image_id: str) -> Optional[Path]:
    """SegmentationClass/<id>.png, else SegmentationClassAug/<id>.png, else None."""
    for folder in ("SegmentationClass", "SegmentationClassAug"):
        path = root / folder / f"{image_id}.png"
        if path.is_file():
            return path
    return None


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} not found" if not path.exists() else f"{path}: {what} is not a folder")


def _check_images_exist(image_dir: Path, ids: Sequence[str], where: str) -> None:
    # One listdir instead of N stats: VOC/SBD lists hold ~10k ids.
    present = set(os.listdir(image_dir))
    missing = [i for i in ids if f"{i}.jpg" not in present]
    if missing:
        raise DatasetError(f"{where}: {len(missing)} id(s) have no JPEG in {image_dir}: {preview(missing)}")


class VOCDataset(SegmentationDataset):
    """PASCAL VOC 2012 (or anything in its layout, such as the embedded demo).

    Image-level labels, in order of preference: ``labels_path`` if given, else ``root/cls_labels.npy``
    if present, else each image's XML annotation, else its segmentation mask. Images with no class are
    dropped with a warning. Every listed id must have its JPEG, and the images' and masks' headers
    must pass :meth:`check_headers` (checked here, up front; ``max_pixels``: the largest image
    accepted, None for no limit).
    """

    def __init__(self, root: str | os.PathLike, ids_or_list_path: IdsOrList, labels_path: Optional[str | os.PathLike] = None,
                 *, max_pixels: Optional[int] = MAX_PIXELS):
        self.root = Path(root)
        _require_dir(self.root, "dataset root")
        _require_dir(self.root / "JPEGImages", "image folder JPEGImages")
        ids, self.list_source = resolve_id_list(self.root, ids_or_list_path)
        _check_images_exist(self.root / "JPEGImages", ids, self.list_source)
        self._class_names = read_class_names(self.root)
        self._labels = self._resolve_labels(ids, labels_path)
        self._ids = drop_unlabelled(ids, self._labels, self.list_source)
        self.check_headers(max_pixels)

    def _resolve_labels(self, ids: Sequence[str], labels_path) -> dict[str, np.ndarray]:
        self.labels_file: Optional[Path] = None  # the labels table read, if one was
        if labels_path is None and (self.root / "cls_labels.npy").is_file():
            labels_path = self.root / "cls_labels.npy"
        if labels_path is not None and self._refresh_if_stale(Path(labels_path)):
            self.labels_file = Path(labels_path)
            return self._labels_from_file(Path(labels_path), ids)
        skipped = SkippedNames()
        labels = {i: labels_for_id(self.root, i, self._class_names, "auto", skipped) for i in ids}
        warn_unknown_names(skipped, self.list_source, self._class_names)
        return labels

    def _refresh_if_stale(self, path: Path) -> bool:
        """Rebuild a labels file we wrote whose sources changed; False when it cannot be rewritten
        (the labels then come from the sources directly)."""
        record = stale_labels_file(self.root, path)
        if record is None:
            return True
        try:
            write_cls_labels(self.root, record["ids"], path, record["source"])
        except OSError as err:
            warnings.warn(f"{path}: out of date with its annotations and not writable ({err}); "
                          "reading the labels from the annotations instead", stacklevel=3)
            return False
        warnings.warn(f"{path}: annotations changed since it was written; rebuilt", stacklevel=3)
        return True

    def _labels_from_file(self, path: Path, ids: Sequence[str]) -> dict[str, np.ndarray]:
        table = load_cls_labels(path)
        keys = id_keys(ids, f"{path} read for {self.list_source}")
        missing = [i for i in ids if keys[i] not in table]
        if missing:
            raise DatasetError(f"{path}: no labels for {len(missing)} listed id(s): {preview(missing)}")
        labels = {i: table[keys[i]] for i in ids}
        wrong = [i for i in ids if labels[i].shape != (self.num_classes,)]
        if wrong:
            raise DatasetError(
                f"{path}: label vector of {wrong[0]} has shape {labels[wrong[0]].shape}, "
                f"expected ({self.num_classes},) for the classes of {self.root}"
            )
        return labels

    def image_path(self, i: int) -> Path:
        return self.root / "JPEGImages" / f"{self._ids[i]}.jpg"

    def mask_path(self, i: int) -> Optional[Path]:
        return find_mask(self.root, self._ids[i])

    def annotation_files(self) -> list[Path]:
        """The class list, the labels table (else each id's XML or mask the labels came from),
        and each listed id's ground-truth mask."""
        files = [self.root / "classes.txt"] if (self.root / "classes.txt").is_file() else []
        if self.labels_file is not None:
            files.append(self.labels_file)
        else:
            files += [_label_source(self.root, i, "auto") for i in self._ids]
        files += [p for p in (find_mask(self.root, i) for i in self._ids) if p is not None]
        return list(dict.fromkeys(files))

    def mask_file(self, i: int) -> Path:
        return self.mask_path(i) or self.root / "SegmentationClass" / f"{self._ids[i]}.png"

    def _mask_path_or_array(self, i: int):
        path = self.mask_path(i)
        if path is None:
            return None, ""
        return load_label_png(path), str(path)
