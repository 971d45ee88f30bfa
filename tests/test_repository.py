"""The repository's own references hold: the public names exist, the README's layout names every
module, no comment points at a file or a tracker that a reader of the repository cannot open."""
import pathlib
import re

import rib_ext

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = pathlib.Path(rib_ext.__file__).resolve().parent


def test_ops_star_import_gives_every_listed_name():
    namespace = {}
    exec("from rib_ext.ops import *", namespace)
    import rib_ext.ops as ops
    missing = [name for name in ops.__all__ if name not in namespace]
    assert not missing
    assert "oracle" in namespace and "gndrp_pool" in namespace


def _readme_layout() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Layout")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_readme_layout_names_every_module_of_the_package():
    layout = _readme_layout()
    entries = sorted(p.name + "/" for p in PACKAGE.iterdir()
                     if p.is_dir() and (p / "__init__.py").exists())
    entries += sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    missing = [e for e in entries if not re.search(rf"(?<![\w/.]){re.escape(e)}", layout)]
    assert not missing, f"README's layout does not name {missing}"


def test_no_test_module_imports_another_or_conftest():
    """What tests share lives in conftest fixtures or in helper modules with non-test names."""
    pattern = re.compile(r"^\s*(from|import)\s+(conftest|test_\w+)\b", re.M)
    offenders = [f"{p.name}: {m.group(0).strip()}" for p in sorted((ROOT / "tests").glob("*.py"))
                 for m in pattern.finditer(p.read_text())]
    assert not offenders


def test_ci_runs_the_readme_test_command_then_the_slow_tests():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line.strip() for line in readme.splitlines() if "python -m pytest" in line
                   and line.startswith("    python3 -m venv"))
    assert '-m "not slow"' in command
    ci_part = command.split(" && ", 2)[2]  # after creating and entering the virtual environment
    assert ci_part in ci
    assert ci.index(ci_part) < ci.index("python -m pytest -q -m slow tests")


def _repository_text_files():
    for pattern in ("rib_ext/**/*.py", "tests/*.py", "benchmarks/*.py", "benchmarks/*.sh",
                    "benchmarks/*.md", "csrc/**/*.h", "csrc/**/*.cpp", "csrc/**/*.cu", "csrc/**/*.cuh",
                    "python/*.cpp", "docs/*.md", "*.md", "*.py", "*.toml", ".ci/run"):
        yield from ROOT.glob(pattern)


def test_no_reference_a_reader_of_the_repository_cannot_open():
    """Comments and docs explain themselves: no design notes outside the repository, no tracker
    numbers, no test file that does not exist."""
    outside = re.compile(r"DESIGN\.md|IRN_NOTES\.md|STYLE\.md|\b[Ii]ssues? #?\d+|\(#\d+\)")
    test_file = re.compile(r"tests/(test_\w+\.py)")
    found = []
    for path in _repository_text_files():
        if path.name == "test_repository.py":
            continue
        text = path.read_text()
        found += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in outside.finditer(text)]
        found += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in test_file.finditer(text)
                  if not (ROOT / "tests" / m.group(1)).exists()]
    assert not found
