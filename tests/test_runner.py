"""The one per-image loop: outputs from path patterns, the skip of images whose outputs are all
whole, writes in the declared order, sums, the same results in a pool of workers."""
import numpy as np
import pytest

from rib_ext.io import save_json, save_npy
from rib_ext.runner import ImageResult, Output, PerImageStage, run_stage

IDS = [f"im{i}" for i in range(5)]


def _square(offset: int, name: str) -> ImageResult:
    n = int(name[2:]) + offset
    return ImageResult(files={"record": {"n": n}, "value": np.array([n * n])},
                       sums={"total": n * n, "hist": np.bincount([n % 3], minlength=3)})


def _reread(offset: int, name: str, paths) -> ImageResult:
    value = int(np.load(paths["value"])[0])
    return ImageResult(sums={"total": value, "hist": np.bincount([int(name[2:]) % 3], minlength=3)})


def stage(reuse=None) -> PerImageStage:
    return PerImageStage("square", {"record": Output("records/{id}.json", save_json),
                                    "value": Output("{kind}/{id}.npy", save_npy)},
                         compute=_square, reuse=reuse, sums={"total": (), "hist": (3,)})


def test_outputs_follow_their_patterns_and_the_sums_cover_every_image(tmp_path):
    run = run_stage(stage(), 0, IDS, tmp_path, fields={"kind": "values"})
    assert run.written == 5 and run.skipped == 0
    assert run.count("total") == sum(i * i for i in range(5))
    assert run.sums["hist"].tolist() == [2, 2, 1]
    assert sorted(p.name for p in (tmp_path / "values").iterdir()) == [f"{n}.npy" for n in IDS]
    assert (tmp_path / "records" / "im3.json").is_file()


def test_an_image_is_done_only_when_all_its_outputs_are_whole(tmp_path):
    run_stage(stage(), 0, IDS, tmp_path, fields={"kind": "v"})
    (tmp_path / "records" / "im1.json").unlink()          # one output missing
    (tmp_path / "v" / "im2.npy").write_bytes(b"\x93NUMPY")  # one output truncated
    with pytest.warns(UserWarning, match="im2.npy"):
        again = run_stage(stage(), 0, IDS, tmp_path, fields={"kind": "v"})
    assert sorted(again.todo) == ["im1", "im2"] and again.written == 2 and again.skipped == 3
    assert int(np.load(tmp_path / "v" / "im2.npy")[0]) == 4


def test_reuse_reads_the_done_images_back_into_the_sums(tmp_path):
    first = run_stage(stage(_reread), 0, IDS[:3], tmp_path, fields={"kind": "v"})
    both = run_stage(stage(_reread), 0, IDS, tmp_path, fields={"kind": "v"})
    assert both.written == 2 and both.skipped == 3
    assert both.count("total") == sum(i * i for i in range(5)) != first.count("total")


def test_a_pool_of_workers_gives_the_same_files_and_sums(tmp_path):
    alone = run_stage(stage(), 1, IDS, tmp_path / "a", fields={"kind": "v"}, workers=1)
    pooled = run_stage(stage(), 1, IDS, tmp_path / "b", fields={"kind": "v"}, workers=2)
    assert alone.count("total") == pooled.count("total")
    for name in IDS:
        assert (tmp_path / "a" / "v" / f"{name}.npy").read_bytes() == \
            (tmp_path / "b" / "v" / f"{name}.npy").read_bytes()


def test_a_stage_that_drives_its_images_emits_them(tmp_path):
    def drive(offset, todo, emit):
        for name in reversed(todo):  # in its own order
            emit(name, _square(offset, name))

    declared = PerImageStage("square", stage().outputs, drive=drive, sums={"total": (), "hist": (3,)})
    run = run_stage(declared, 0, IDS, tmp_path, fields={"kind": "v"})
    assert run.written == 5 and run.count("total") == 30


def test_an_undeclared_output_or_sum_is_refused(tmp_path):
    bad = PerImageStage("bad", {"value": Output("{id}.npy", save_npy)},
                        compute=lambda _, name: ImageResult(files={"other": 1}))
    with pytest.raises(KeyError, match="undeclared outputs"):
        run_stage(bad, None, IDS, tmp_path)
    with pytest.raises(ValueError, match="compute or drive"):
        PerImageStage("neither", {})
