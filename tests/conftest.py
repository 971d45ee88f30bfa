"""Shared pytest setup: the ``needs_cuda`` marker skips cleanly where no CUDA device is present;
the fixtures every module may use."""
import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `-n auto` starts one worker per core: each keeps to one thread (the processes the tests
    # start too), since two busy-waiting OpenMP threads per worker doubled every test's CPU time.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

from coco_files import write_coco_root


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none present on this machine)")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for a module of small networks: on a shared 2-core machine two
    busy-waiting OpenMP threads per process ran them ten to a hundred times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda)])
def device(request):
    """A test taking ``device`` runs on the CPU always and on CUDA as a test that skips without a
    GPU."""
    return request.param


def pytest_generate_tests(metafunc):
    """OpTester subclasses (tests/op_tester.py) list their cases as class attributes."""
    if metafunc.cls is None or not hasattr(metafunc.cls, "OPCHECK_CASES"):
        return
    for fixture, attr in (("case", "CASES"), ("gcase", "GRADCHECK_CASES"), ("ocase", "OPCHECK_CASES")):
        if fixture in metafunc.fixturenames:
            cases = getattr(metafunc.cls, attr)
            metafunc.parametrize(fixture, cases, ids=["-".join(f"{k}={v}" for k, v in c.items()) or "default"
                                                      for c in cases])
    explicit = {name.strip() for m in metafunc.definition.iter_markers("parametrize")
                for name in (m.args[0].split(",") if isinstance(m.args[0], str) else m.args[0])}
    for fixture, attr in (("dtype", "DTYPES"), ("layout", "LAYOUTS")):
        if fixture in metafunc.fixturenames and fixture not in explicit:
            values = getattr(metafunc.cls, attr)
            metafunc.parametrize(fixture, values, ids=[str(v).replace("torch.", "") for v in values])


@pytest.fixture(scope="session")
def tiny_classifier_run(tmp_path_factory):
    """A run folder of the tiny demo (``pipeline_runs.TINY``) with its classifier trained, made once
    per session: modules start their runs from a copy of it (``finish_run(..., start=...)``) instead
    of training the same classifier again. Never write into it."""
    from pipeline_runs import finish_run

    return finish_run(tmp_path_factory, "classifier", "train_cam")


@pytest.fixture(scope="session")
def _tiny_demo_once(tmp_path_factory):
    from rib_ext.config import DemoDataConfig
    from rib_ext.data import generate_demo

    return generate_demo(tmp_path_factory.mktemp("tiny_demo") / "demo",
                         DemoDataConfig(num_train=4, num_val=2, image_size=48))


@pytest.fixture
def tiny_demo(_tiny_demo_once, tmp_path):
    """A small VOC-layout folder from the demo generator (4 training and 2 held-out images of 48
    pixels, seed 0), generated once per session; each test gets its own copy, free to edit."""
    import shutil

    return shutil.copytree(_tiny_demo_once, tmp_path / "demo")


@pytest.fixture
def coco_root(tmp_path):
    """A tiny COCO 2014 folder (tests/coco_files.py): three 20x30 images, one with no class."""
    return write_coco_root(tmp_path)
