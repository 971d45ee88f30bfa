"""What the stage shells share: the settings their provenance records, the figures their summaries
keep, and which rank runs the IRN stages. Device choice and progress bars are in
:mod:`rib_ext.runtime`, per-image files and skip checks in :mod:`rib_ext.outputs`."""
from __future__ import annotations

from typing import Sequence

from rib_ext.evaluation import json_numbers


def result_settings(section, drop: Sequence[str] = ()) -> dict:
    """A stage config's fields that shape its outputs, as plain values (for provenance): the
    device, worker count, checkpoint cadence and missing-file policy do not."""
    from rib_ext.config import plain_dict

    skip = {"device", "num_workers", "checkpoint_every", "tensorboard", "allow_missing", *drop}
    return {k: v for k, v in plain_dict(section).items() if k not in skip}


def evaluation_summary(result: dict) -> dict:
    """The figures a summary keeps of an evaluation."""
    keep = ("best_threshold", "threshold", "miou", "precision", "recall", "f1", "num_images", "seconds")
    return json_numbers({k: result[k] for k in keep if k in result})


def plain_values(result: dict) -> dict:
    """The plain values of a stage function's result, for the summary."""
    return {k: v for k, v in result.items() if isinstance(v, (int, float, str, type(None)))}
