"""The benchmark scripts run to the end on the CPU: figures are measured elsewhere."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_rib():
    return _load("bench_rib")


BENCH_RIB_TINY = ["--device", "cpu", "--sizes", "tiny", "--images", "1", "--steps", "1", "--no-flops"]


def test_bench_rib_cpu_default_variants_all_run(bench_rib, tmp_path):
    out = tmp_path / "rib.json"
    assert bench_rib.main(BENCH_RIB_TINY + ["--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    rows = doc["sizes"][0]["rows"]
    assert [r["variant"] for r in rows] == bench_rib.CPU_DEFAULT
    assert all("error" not in r and r["images_per_s"] > 0 for r in rows), rows
    _named(rows)
    # a whole group warmed up, a multiple of G timed (here G, --images 1 rounded up to a group)
    by_name = {r["variant"]: r for r in rows}
    assert (by_name["G4 vmap+bf16+cl"]["group_size"], by_name["G4 vmap+bf16+cl"]["warmup_images"],
            by_name["G4 vmap+bf16+cl"]["timed_images"]) == (4, 4, 4)
    assert (by_name["engine"]["warmup_images"], by_name["engine"]["timed_images"]) == (1, 1)


def _named(rows):
    """Every row names the device, the operators' backend, torch and CUDA."""
    import torch

    for r in rows:
        assert r["device"] in ("cpu", "cuda") and r["device_name"], r
        assert r["backend"] in ("compiled", "fallback") or isinstance(r["backend"], dict), r
        assert r["torch"] == torch.__version__ and r["cuda"] == torch.version.cuda, r


def test_bench_rib_writes_each_variant_and_skips_a_failing_one(bench_rib, tmp_path, monkeypatch):
    monkeypatch.setitem(bench_rib.VARIANTS, "broken", dict(precision="fp8"))  # the config refuses it
    written = []
    save = bench_rib.write_json

    def spy(path, doc):
        written.append([r["variant"] for r in doc["sizes"][-1]["rows"]])
        save(path, doc)

    monkeypatch.setattr(bench_rib, "write_json", spy)
    out = tmp_path / "rib.json"
    rc = bench_rib.main(BENCH_RIB_TINY + ["--variants", "engine", "broken", "loop", "--json", str(out)])
    assert rc == 1
    # rewritten after every variant, the failure included, so nothing measured is lost
    assert written == [["engine"], ["engine", "broken"], ["engine", "broken", "loop"]]
    rows = json.loads(out.read_text())["sizes"][0]["rows"]
    assert "precision" in rows[1]["error"] and rows[2]["images_per_s"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["rib.json"]  # atomic: no temporary file left


def test_peak_tflops_by_device_name(bench_rib):
    assert bench_rib.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench_rib.peak_tflops("NVIDIA H200") == 989.0
    assert bench_rib.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench_rib.peak_tflops("NVIDIA A100-SXM4-80GB") is None


@pytest.mark.slow
def test_gpu_check_dry_run_leaves_two_files(tmp_path):
    """``benchmarks/gpu_check.sh OUT --dry-run``: the real call's steps at a tiny size on the CPU;
    OUT holds exactly summary.txt and gpu_check.tar.gz (every log and JSON), every step passes."""
    import os
    import subprocess
    import sys
    import tarfile

    from factories import gpu_check_steps as _steps

    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(ROOT))
    env.pop("GPU_CHECK_LIMIT_SCALE", None)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--dry-run"],
                          env=env, capture_output=True, text=True, timeout=3600)
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, summary
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.tar.gz", "summary.txt"]
    steps = [n for n, _ in _steps()]
    for name in steps:
        assert f"== {name} " in summary
    assert f"status 0; {len(steps)} of {len(steps)} steps finished; step limits 420 s" in summary
    assert "row tiny G8 vmap+bf16+cl" in summary and "### make_cam:" in summary
    jsons = {"rib_voc.json", "rib_groups_small.json", "rib_settings_small.json",
             "make_cam_voc.json", "bench_sgd.json", "bench_ops.json"}
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {f"{n}.log" for n in steps} | {"summary.txt"} | jsons <= names


def test_bench_sgd_checks_every_way_and_writes_its_figures(tmp_path):
    """bench_sgd runs every way of the update at a tiny size, after checking they give the same
    weights bit for bit (a way that differs stops it)."""
    bench_sgd = _load("bench_sgd")
    out = tmp_path / "sgd.json"
    assert bench_sgd.main(["--device", "cpu", "--backbone", "resnet_tiny", "--groups", "1", "3",
                           "--min-run-time", "0.01", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["devices"]["cpu"]
    assert [r["group_size"] for r in rows] == [1, 3]
    assert all(set(r["seconds"]) == set(bench_sgd.WAYS) and min(r["seconds"].values()) > 0 for r in rows)
    _named(rows)


def test_bench_make_cam_and_bench_ops_write_each_row_as_measured(tmp_path, capsys):
    """Each row printed (``row ...``) and the JSON rewritten as it is measured, rows named."""
    bench_make_cam, bench_ops = _load("bench_make_cam"), _load("bench_ops")
    cam = tmp_path / "cam.json"
    bench_make_cam.main(["--device", "cpu", "--images", "2", "--warmup", "1", "--size", "48",
                         "--backbone", "resnet_tiny", "--variants", "float32", "bf16+cl",
                         "--json", str(cam)])
    rows = json.loads(cam.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["float32", "bf16+cl"]
    _named(rows)
    ops_json = tmp_path / "ops.json"
    bench_ops.main(["--device", "cpu", "--tiny", "--no-loop", "--no-compile", "--min-run-time",
                    "0.01", "--json", str(ops_json)])
    _named(json.loads(ops_json.read_text())["rows"])
    printed = capsys.readouterr().out
    assert printed.index("### make_cam:") < printed.index("row make_cam float32:") \
        < printed.index("row make_cam bf16+cl:") < printed.index("| variant |")
    assert "row ops cpu 4x3x8x8:" in printed


@pytest.mark.parametrize("ending", ["", "raise SystemExit(3)", "raise RuntimeError('a failing variant')"])
def test_a_benchmarks_scratch_folder_is_removed_when_it_exits(tmp_path, ending):
    """The data and maps a benchmark writes go with its process, however it ends (GPU-sized runs
    left gigabytes behind otherwise)."""
    import subprocess
    import sys
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
            "from bench_facts import scratch_dir\n"
            "root = scratch_dir('bench_test_')\n"
            "(root / 'maps').mkdir(); (root / 'maps' / 'a.npy').write_bytes(b'x')\n"
            "print(root, flush=True)\n" + ending)
    env = {"TMPDIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    root = Path(res.stdout.strip())
    assert root.parent == tmp_path and root.name.startswith("bench_test_")
    assert not root.exists(), res.stderr
    assert list(tmp_path.iterdir()) == []
