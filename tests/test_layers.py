"""The package's structure, checked: the layer contract of pyproject.toml, no import cycles, and
every registered stage module in the one stage shape."""
from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    """`lint-imports` on pyproject.toml's contracts: an upward import or a stage importing another
    stage fails here, naming the import."""
    pytest.importorskip("importlinter")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command;"
                          "lint_imports_command()", "--no-cache"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def strongly_connected(graph: dict) -> list:
    """Tarjan's components of more than one module."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_strongly_connected_finds_a_cycle():
    assert strongly_connected({"a": ["b"], "b": ["a"], "c": ["a"]}) == [["a", "b"]]
    assert strongly_connected({"a": ["b"], "b": [], "c": ["a"]}) == []


def test_no_import_cycles():
    """No two modules of rib_ext import each other, directly or round a loop (imports inside
    functions count: a lazy import hides a cycle, it does not remove it)."""
    grimp = pytest.importorskip("grimp")
    sys.path.insert(0, str(ROOT))
    g = grimp.build_graph("rib_ext")
    graph = {m: [i for i in g.find_modules_directly_imported_by(m) if i in g.modules and i != m]
             for m in g.modules}
    assert strongly_connected(graph) == []


def test_every_registered_stage_has_the_stage_shape():
    from rib_ext.stages.registry import STAGES, stage_module

    for name in STAGES:
        mod = stage_module(name)
        assert isinstance(mod.UPSTREAM, tuple), name
        for dep in mod.UPSTREAM:
            lists = [f"{kind}:{which}" for kind in ("data", "truth") for which in ("train", "eval", "val")]
            assert dep in STAGES or dep in lists, (name, dep)
            if dep in STAGES:
                assert STAGES.index(dep) < STAGES.index(name), f"{name} reads the later stage {dep}"
        assert list(inspect.signature(mod.settings).parameters) == ["cfg"], name
        assert list(inspect.signature(mod.run).parameters) == ["ctx", "cfg"], name
        # A stage that derives values from another stage's result reads that stage.
        assert set(getattr(mod, "RESULTS_FROM", ())) <= set(mod.UPSTREAM), name
        if hasattr(mod, "derived"):
            assert list(inspect.signature(mod.derived).parameters) == ["ctx", "cfg", "name"], name


def test_every_stage_module_is_registered():
    from rib_ext.stages.registry import STAGES

    shared = {"__init__", "common", "context", "options", "provenance", "registry"}
    modules = {p.stem for p in (ROOT / "rib_ext" / "stages").glob("*.py")} - shared
    assert modules == set(STAGES)


def test_every_module_has_a_layer():
    """A new top-level module or package must be placed in the layer contract, or it escapes it."""
    import tomllib

    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    placed = {name.strip() for layer in contract["layers"] for name in layer.replace(":", "|").split("|")}
    package = ROOT / "rib_ext"
    found = {f"rib_ext.{p.stem}" for p in package.glob("*.py") if p.stem not in ("__init__", "__main__")}
    found |= {f"rib_ext.{p.name}" for p in package.iterdir() if (p / "__init__.py").is_file()}
    assert found - placed == set(), f"modules outside the layer contract: {sorted(found - placed)}"
