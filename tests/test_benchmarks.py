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


def test_bench_rib_writes_each_variant_and_skips_a_failing_one(bench_rib, tmp_path, monkeypatch):
    monkeypatch.setitem(bench_rib.VARIANTS, "broken", dict(precision="fp8"))  # the config refuses it
    written = []
    save = bench_rib.save_text

    def spy(path, text):
        written.append([r["variant"] for r in json.loads(text)["sizes"][-1]["rows"]])
        save(path, text)

    monkeypatch.setattr(bench_rib, "save_text", spy)
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
    """``benchmarks/gpu_check.sh OUT --dry-run``: every step at a tiny size on the CPU; OUT holds
    exactly summary.txt and gpu_check.tar.gz (every log and JSON), the limits add up to 480 s."""
    import os
    import subprocess
    import sys
    import tarfile

    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(ROOT))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--dry-run"],
                          env=env, capture_output=True, text=True, timeout=1800)
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, summary
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.tar.gz", "summary.txt"]
    steps = ["build", "ops_backend", "cuda_tests", "bench_ops", "bench_rib_small", "bench_rib_voc",
             "make_cam_voc"]
    for name in steps:
        assert f"== {name} " in summary
    assert "status 0; step limits 480 s" in summary
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {f"{n}.log" for n in steps} | {"summary.txt", "env.txt", "bench_rib_small.json",
                                          "bench_rib_voc.json", "make_cam_voc.json"} <= names


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
