"""The one reader of image-id lists, and the checks every id goes through, read or given in code.

A list file holds one id per line, read exactly as written:

- ``2007_000032``: the id.
- ``2007_000032.jpg`` or ``JPEGImages/2007_000032.jpg``: an image file name or path; the id is the
  name less its image extension (``.jpg``, ``.jpeg``, ``.png``). Any other dot is part of the id.
- ``JPEGImages/<id>.jpg SegmentationClassAug/<id>.png``: the image/mask pairs of some repositories'
  ``train_aug.txt``; both must name the same id.
- blank lines and lines starting with ``#`` are skipped (comments).

Anything else is an error naming the file and line: an id holds no whitespace (a space would have
cut it), and a line of two words that are not such a pair (e.g. the ``<id> <1|-1>`` lines of VOC's
per-class ``ImageSets/Main`` lists) is not an id list. The file must be UTF-8 (a byte-order mark is
dropped); UTF-16 or undecodable bytes are an error naming the file rather than a traceback.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence, Union

from .errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _id_of_token(token: str) -> str:
    name = token.rsplit("/", 1)[-1]
    stem, dot, suffix = name.rpartition(".")
    return stem if dot and f".{suffix.lower()}" in IMAGE_SUFFIXES else name


def id_problem(image_id: str) -> str | None:
    """Why ``image_id`` cannot be an image id (None when it can)."""
    if not image_id:
        return "empty id"
    if any(c.isspace() for c in image_id):
        return f"id {image_id!r} holds whitespace"
    if "/" in image_id or "\\" in image_id or image_id in (".", ".."):
        return f"id {image_id!r} is a path, not a file stem"
    if "\0" in image_id:
        return f"id {image_id!r} holds a NUL character"
    return None


def _decode(path: Path) -> list[str]:
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\0" in data[:4096]:
        raise DatasetError(f"{path}: the list looks UTF-16 (or binary); save it as UTF-8 text, one id "
                           f"per line")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise DatasetError(f"{path}, line {number}: not UTF-8 text ({err.reason} at byte "
                               f"{err.start} of the line); save the list as UTF-8") from None
    return lines


def _line_id(line: str, where: str) -> str | None:
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    tokens = text.split()
    if len(tokens) == 1:
        image_id = _id_of_token(tokens[0])
    elif len(tokens) == 2 and all("/" in t or "." in t for t in tokens):
        image_id, other = (_id_of_token(t) for t in tokens)
        if image_id != other:
            raise DatasetError(f"{where}: {text!r} pairs files of two images ({image_id!r} and "
                               f"{other!r})")
    else:
        raise DatasetError(f"{where}: {text!r} is not one id (ids hold no spaces; a list holds one "
                           f"id per line, or 'JPEGImages/<id>.jpg SegmentationClassAug/<id>.png')")
    problem = id_problem(image_id)
    if problem:
        raise DatasetError(f"{where}: {problem}")
    return image_id


def read_id_list(path: Union[str, os.PathLike]) -> list[str]:
    """Image ids of a list file (the format is the module docstring's), in file order.

    An id listed twice is an error naming both lines: it would count twice in the scores and its
    outputs would be written twice.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: image list not found")
    ids, first_line = [], {}
    for number, line in enumerate(_decode(path), start=1):
        image_id = _line_id(line, f"{path}, line {number}")
        if image_id is None:
            continue
        if image_id in first_line:
            raise DatasetError(f"{path}, line {number}: id {image_id!r} is listed again "
                               f"(first on line {first_line[image_id]})")
        first_line[image_id] = number
        ids.append(image_id)
    if not ids:
        raise DatasetError(f"{path}: image list is empty")
    return ids


def check_ids(ids: Sequence[str], where: str) -> None:
    """Ids given in code: each a valid id (:func:`id_problem`), none given twice."""
    seen: dict = {}
    for pos, image_id in enumerate(ids):
        problem = id_problem(image_id)
        if problem:
            raise DatasetError(f"{where}, position {pos}: {problem}")
        if image_id in seen:
            raise DatasetError(f"{where}: id {image_id!r} is given twice (positions {seen[image_id]} "
                               f"and {pos})")
        seen[image_id] = pos


def id_key(image_id: str) -> Union[int, str]:
    """Key of an id in IRN's ``cls_labels.npy``: IRN stores ``int("2007_000032".replace("_", ""))``.
    Ids that are not digits once the underscores go keep their string form. Two ids can share a key
    (``1_23`` and ``12_3``): :func:`id_keys` refuses them."""
    digits = image_id.replace("_", "")
    return int(digits) if digits.isdigit() else image_id


def id_keys(ids: Sequence[str], where: str) -> Mapping[str, Union[int, str]]:
    """Every id's :func:`id_key`; two ids with one key (the labels file would give both one label)
    are an error naming both."""
    keys: dict = {}
    owner: dict = {}
    for image_id in ids:
        key = id_key(image_id)
        if key in owner and owner[key] != image_id:
            raise DatasetError(f"{where}: ids {owner[key]!r} and {image_id!r} share the key {key!r} "
                               f"in IRN's labels file (its keys drop the underscores and read the "
                               f"rest as a number), so they would get one label; rename one of them")
        owner[key] = image_id
        keys[image_id] = key
    return keys
