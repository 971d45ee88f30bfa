"""The run context every stage's ``run(ctx, cfg)`` gets: output layout, datasets, map sets, rank,
missing-file policy, device, logging and writing, in one place. Every path of the run folder comes
from ``ctx.layout`` (:class:`rib_ext.layout.Layout`): stage modules hold no path literals.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Optional

import numpy as np
from rib_ext import distributed
from rib_ext.config import PipelineConfig
from rib_ext.io import save_json
from rib_ext.layout import Layout

log = logging.getLogger("rib_ext.pipeline")


class PipelineError(Exception):
    """A user error (missing root, bad list or config, provenance mismatch...): the command line
    prints ``error: <message>`` and exits with status 2."""


class RunContext:
    """What a stage needs from the run, besides its own settings.

    Attributes: ``cfg`` (PipelineConfig), ``out`` (Path), ``rank``, ``device`` (torch.device),
    ``log`` (logging.Logger), ``lists`` (split or list file
    used for train / eval / val). Datasets (``train_set``, ``eval_set``, ``val_set``) are opened on
    first use, once.
    """

    def __init__(self, cfg: PipelineConfig, overwrite: bool = False):
        from rib_ext.runtime import resolve_device

        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.layout = Layout(self.out)
        if self.out.exists() and not self.out.is_dir():
            raise PipelineError(f"--out {self.out} names a file, not a folder")
        self.overwrite = overwrite
        self.rank = distributed.rank()
        self.log = log
        try:
            self.device = resolve_device(cfg.device)
        except RuntimeError as err:
            raise PipelineError(str(err)) from err
        self.lists = {"train": cfg.train_list or "train", "eval": cfg.eval_list or "train",
                      "val": cfg.val_list or "val"}
        self._datasets: Dict[str, object] = {}
        self._prepared = False

    # ------------------------------------------------------------------ rank, logging, writing
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self, what: str = "") -> None:
        """Wait for every rank, with no deadline, logging ``what`` while it waits (see
        :func:`rib_ext.distributed.barrier`)."""
        distributed.barrier(what)

    def info(self, message: str) -> None:
        if self.is_main:
            self.log.info(message)

    def warn(self, message: str) -> None:
        self.log.warning(message)

    def write_json(self, path: Path, obj) -> None:
        """Atomic JSON write, by rank 0 only."""
        if self.is_main:
            save_json(path, obj)

    # -------------------------------------------------------------------------- output layout
    def stage_dir(self, stage: str, *sub: str) -> Path:
        return self.layout.stage_dir(stage, *sub)

    def maps_dir(self, name: str) -> Path:
        return self.layout.maps_dir(name)

    def map_sets(self) -> Dict[str, Path]:
        """The map sets made so far (cam: make_cam's, rib: the rib stage's), in that order."""
        return self.layout.map_sets()

    def require_map_sets(self, stage: str) -> Dict[str, Path]:
        found = self.map_sets()
        if not found:
            raise PipelineError(f"{stage}: no maps under {self.out} yet: run make_cam or rib first")
        return found

    def score_dir(self, name: str) -> Path:
        """make_sem_seg's random-walk scores of a map set (the segment stage re-trains from them)."""
        return self.layout.score_dir(name)

    def mask_dir(self, name: str) -> Path:
        return self.layout.mask_dir(name)

    def saliency_mask_dir(self, name: str) -> Path:
        return self.layout.saliency_mask_dir(name)

    def classifier_path(self) -> Path:
        """The classifier make_cam and rib start from: --cam-checkpoint, else train_cam's."""
        if self.cfg.cam_checkpoint:
            return Path(self.cfg.cam_checkpoint)
        return self.layout.classifier

    def load_classifier(self):
        """The classifier, checked to have the dataset's classes (and sane weights)."""
        from rib_ext.checkpoints import check_num_classes
        from rib_ext.models import load_cam_net

        path = self.classifier_path()
        if not path.is_file():
            raise PipelineError(f"no classifier at {path}: run train_cam first or pass --cam-checkpoint")
        model = load_cam_net(path, "cpu")
        ds = self.eval_set
        check_num_classes(path, model.num_classes, ds.num_classes, f"dataset {self.cfg.dataset}",
                          getattr(model, "class_names", None), ds.class_names)
        return model

    def seed_threshold(self, name: str) -> Optional[float]:
        """eval_seed's best background threshold of a map set, None when it has not run."""
        try:
            return float(json.loads(self.layout.seed_result(name).read_text())["best_threshold"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def best_threshold(self, name: str, instead: str = "--irn-auto-thresholds false") -> float:
        """eval_seed's best background threshold of a map set (``instead``: the flag that gives
        the stage a threshold of its own, named when there is none)."""
        path = self.layout.seed_result(name)
        if not path.exists():
            raise PipelineError(f"a background threshold is needed: pass {instead} or run "
                                f"eval_seed first (no {path})")
        return float(json.loads(path.read_text())["best_threshold"])

    # ------------------------------------------------------------------------------- datasets
    def dataset_root(self) -> Path:
        cfg = self.cfg
        if cfg.root is not None:
            root = Path(cfg.root)
            if not root.is_dir():
                raise PipelineError(f"dataset root not found: {root}")
            return root
        if cfg.dataset == "demo":
            return self.layout.demo_data
        raise PipelineError(f"--root is required for --dataset {cfg.dataset}")

    def dataset(self, which: str):
        """``"train"`` (classifier training), ``"pool"`` (RIB's other images: the training list;
        on COCO with its images of no class kept, as the authors' code keeps them), ``"eval"``
        (maps made and evaluated; on COCO with its images of no class, see
        :attr:`keeps_no_class_images`) or ``"val"`` (the segment stage's evaluation), each opened
        once."""
        if which not in self._datasets:
            from rib_ext.data import build_dataset

            if self.cfg.dataset == "demo" and self.cfg.root is not None:
                self.check_named_demo_folder(Path(self.cfg.root))
            kw = {"demo": self.cfg.demo} if self.cfg.dataset == "demo" else {}
            kw["max_pixels"] = self.cfg.max_pixels
            listed = "train" if which == "pool" else which
            if self.cfg.dataset == "coco" and (which == "pool" or (which == "eval" and
                                                                   self.keeps_no_class_images)):
                kw["keep_unlabelled"] = True
            elif which == "pool":
                return self.train_set  # VOC lists hold no image without a class
            self._datasets[which] = build_dataset(self.cfg.dataset, self.dataset_root(),
                                                  self.lists[listed], **kw)
        return self._datasets[which]

    def check_named_demo_folder(self, root: Path) -> None:
        """A demo folder the user named (--root) is shared by every run given it: one that holds a
        demo of other generator settings is never regenerated under those runs (their maps and
        masks were made from its images); a run with other settings stops, naming both."""
        import dataclasses

        from rib_ext.data.demo import DEMO_VERSION, STAMP_NAME

        stamp_path = root / STAMP_NAME
        if not stamp_path.is_file():
            return  # empty, or a generation of ours that did not finish: generated (again)
        try:
            stamp = json.loads(stamp_path.read_text())
            held, version = dict(stamp["config"]), stamp.get("version")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise PipelineError(f"--root {root}: unreadable demo record {stamp_path} ({err}); "
                                f"delete the folder to generate the demo again") from err
        wanted = dataclasses.asdict(self.cfg.demo)
        if held == wanted and version == DEMO_VERSION:
            return
        flags = {"seed": "--demo-seed", "num_train": "--demo-images", "num_val": "--demo-val-images",
                 "image_size": "--demo-size"}
        holds = " ".join(f"{flags.get(k, k)} {v}" for k, v in held.items())
        diff = ", ".join(f"{flags.get(k, k)} {held.get(k)} -> {v}" for k, v in wanted.items()
                         if held.get(k) != v)
        if version != DEMO_VERSION:
            diff = ", ".join(filter(None, [diff, f"generator version {version} -> {DEMO_VERSION}"]))
        raise PipelineError(f"--root {root} holds the demo generated with other settings "
                            f"({holds}; this run: {diff}): a data folder you named is never "
                            f"regenerated under the runs made from it; use another --root, or "
                            f"these settings")

    def prepare_datasets(self, stages) -> None:
        """Open the datasets ``stages`` read, on rank 0 first, then on the other ranks (which wait
        for it): opening one may write shared files (the demo dataset is generated, a stale
        cls_labels.npy rebuilt, stale COCO mask caches removed), and two ranks writing them at
        once collide. Every rank must call this; it does nothing the second time."""
        which = ["train", "eval"] + (["pool"] if "rib" in stages else []) + \
            (["val"] if "segment" in stages else [])
        if self._prepared:
            return
        with distributed.main_first(f"preparing the {self.cfg.dataset} dataset in {self.dataset_root()}"):
            for w in which:
                self.dataset(w)
        self._prepared = True

    @property
    def keeps_no_class_images(self) -> bool:
        """COCO images with no class stay in the list to map and evaluate, with keys-only maps
        and all-background masks, as in the authors' code (their COCO figures count them); the
        paper behaviour (--rib-behaviour paper) drops them with a warning, as a classifier's training list does."""
        return self.cfg.rib.behaviour != "paper"

    @property
    def train_set(self):
        return self.dataset("train")

    @property
    def pool_set(self):
        return self.dataset("pool")

    @property
    def eval_set(self):
        return self.dataset("eval")

    @property
    def val_set(self):
        return self.dataset("val")

    def dataset_description(self, which: str, truth: bool = False) -> dict:
        """What identifies a list's data, for provenance: its images and image-level labels, or
        with ``truth`` its ground-truth masks (what the evaluations read: an edited mask changes
        only that). The demo is described by its folder and generator settings (a new seed draws
        new images under the same ids), so it is not opened here; other datasets by root, list, a
        hash of the ids and one of the labels, or of the contents of the mask files."""
        import hashlib

        cfg = self.cfg
        desc: dict = {"dataset": cfg.dataset, "list": self.lists[which]}
        if cfg.dataset == "demo":
            from rib_ext.config import plain_dict
            from rib_ext.data.demo import DEMO_VERSION

            desc.update(root=self._root_text(), generator_version=DEMO_VERSION, demo=plain_dict(cfg.demo))
            return desc
        ds = self.dataset(which)
        desc.update(root=self._root_text(), num_images=len(ds),
                    ids_sha256=hashlib.sha256("\n".join(ds.ids).encode()).hexdigest())
        if truth:
            desc["masks_sha256"] = masks_fingerprint(ds)
        else:
            desc["labels_sha256"] = labels_fingerprint(ds)
        return desc

    def _root_text(self) -> str:
        """The dataset folder as provenance names it: inside the run folder relative to it."""
        root = self.dataset_root() if self.cfg.root is not None else self.layout.demo_data
        try:
            return f"<out>/{root.resolve().relative_to(self.out.resolve()).as_posix()}"
        except ValueError:
            return str(root.resolve())


def labels_fingerprint(ds) -> str:
    """sha256 of a dataset's class names and image-level labels (what the classifier, make_cam and
    rib read), whichever files they were read from."""
    import hashlib

    h = hashlib.sha256("\n".join(ds.class_names).encode() + b"\0")
    h.update(np.ascontiguousarray(ds.label_matrix(), dtype=np.float32).tobytes())
    return h.hexdigest()


def masks_fingerprint(ds) -> str:
    """sha256 over the contents of a dataset's ground-truth mask files (cached by size and
    modification time), or over every annotation file when the masks are drawn from them (COCO's
    instances)."""
    import hashlib

    from rib_ext.io import file_digest

    files = [ds.mask_file(i) for i in range(len(ds))]
    if any(f is None for f in files):
        return ds.annotation_fingerprint()
    root = Path(getattr(ds, "root", "/"))
    h = hashlib.sha256()
    for path in files:
        try:
            name = path.relative_to(root).as_posix()
        except ValueError:
            name = path.name
        h.update(f"{name}\0{file_digest(path) if path.is_file() else '-'}\n".encode())
    return h.hexdigest()


def default_train_list(cfg: PipelineConfig) -> Optional[str]:
    """VOC: ``train_aug`` when the root has ImageSets/Segmentation/train_aug.txt (the list the papers
    train on), else ``train``; other datasets: ``train``."""
    if cfg.train_list:
        return cfg.train_list
    if cfg.dataset == "voc" and cfg.root and (Path(cfg.root) / "ImageSets" / "Segmentation"
                                               / "train_aug.txt").is_file():
        return "train_aug"
    return "train"
