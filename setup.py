"""Build rib_ext and its compiled operators rib_ext._C.

Build next to the torch you installed, without build isolation (an isolated build pulls another
torch and the extension then fails to load):

    pip install --no-build-isolation .

Environment variables:
    RIB_EXT_CUDA=1|0|auto   force the CUDA kernels on or off (default auto: on when torch is a CUDA
                            build and a CUDA toolkit is found; a GPU is not needed to compile them)
    CUDA_HOME               the toolkit (else /usr/local/cuda, else the folder of the real nvcc)
    TORCH_CUDA_ARCH_LIST    target architectures (default: the visible GPU's, else
                            "7.0;7.5;8.0;9.0+PTX": V100, T4/RTX 20xx, A100 and (same machine code)
                            RTX 30xx / L4 / RTX 40xx, H100, and PTX for newer GPUs)
    DEBUG=1                 -O0 -g, no optimisation
    MAX_JOBS                parallel compile jobs (ninja)
    RIB_EXT_BUILD_DIR       where the object files are kept between builds (default build/ext-objects
                            beside this file): a second `pip install -e .` recompiles only what changed
"""
from __future__ import annotations

import glob
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent.resolve()
# sm_80 machine code also runs on sm_86 and sm_89 (same major version), and 9.0's PTX is compiled
# by the driver for newer GPUs: three targets cover what the five of 7.5..9.0 did, at 3/5 of the
# device-code compile time. 7.0 (V100) is dropped by toolkits that cannot compile it (CUDA 13).
DEFAULT_ARCH_LIST = "7.0;7.5;8.0;9.0+PTX"


def default_arch_list(torch) -> tuple[str, str]:
    """(arch list, why): the visible GPUs' architectures when there are any (a build for this
    machine: faster to compile, nothing unused), else the common list of data-centre and desktop GPUs."""
    try:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a driver problem must not stop a build that needs no GPU
        count = 0
    if count:
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(count)})
        return ";".join(f"{a}.{b}" for a, b in caps), f"the visible GPU(s) ({count})"
    return DEFAULT_ARCH_LIST, "no GPU visible: the common list"


def supported_by_toolkit(arch_list: str, cuda_home: str) -> tuple[str, list[str]]:
    """(arch list, dropped): the entries the toolkit's nvcc can compile (CUDA 13 dropped sm_70,
    V100), so the common default still builds with any toolkit; an explicit list is never filtered."""
    import subprocess

    try:
        out = subprocess.run([str(Path(cuda_home) / "bin" / "nvcc"), "--list-gpu-arch"],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return arch_list, []
    known = {tok.split("_")[-1] for tok in out.split() if tok.startswith("compute_")}
    if not known:
        return arch_list, []
    keep, dropped = [], []
    for arch in arch_list.split(";"):
        (keep if arch.replace("+PTX", "").replace(".", "") in known else dropped).append(arch)
    if not keep:  # nothing left: let nvcc say what is wrong with the list
        return arch_list, []
    return ";".join(keep), dropped


def log(msg: str) -> None:
    print(f"[rib_ext setup] {msg}", file=sys.stderr, flush=True)


def real_nvcc_home() -> str | None:
    """The toolkit folder of the nvcc on PATH, seeing through wrapper scripts that exec the real one."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    path = Path(nvcc).resolve()
    try:
        text = path.read_text(errors="ignore") if path.stat().st_size < 4096 else ""
    except OSError:
        text = ""
    for token in text.split():
        if token.endswith("/bin/nvcc") and Path(token).exists():
            path = Path(token).resolve()
            break
    home = path.parent.parent
    return str(home) if (home / "include" / "cuda_runtime.h").exists() else None


def find_cuda_home() -> str | None:
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and (Path(candidate) / "bin" / "nvcc").exists():
            return str(Path(candidate).resolve())
    return real_nvcc_home()


def pip_cuda_include_dirs(cuda_home: str) -> list[str]:
    """Header folders of pip's nvidia-* packages, for a toolkit that lacks the math libraries' headers.

    torch's CUDA headers include cusparse.h/cublas.h; a minimal toolkit (nvcc + cudart only) does not
    ship them, but the CUDA build of torch pulls them in as pip packages.
    """
    if (Path(cuda_home) / "include" / "cusparse.h").exists():
        return []
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    dirs = []
    for base in (spec.submodule_search_locations or []) if spec else []:
        dirs += sorted(str(p) for p in Path(base).glob("*/include") if p.is_dir())
    return dirs


def decide_cuda(torch_cuda: str | None, cuda_home: str | None) -> bool:
    want = os.environ.get("RIB_EXT_CUDA", "auto").strip().lower()
    if want in ("0", "false", "no", "off"):
        log("RIB_EXT_CUDA=0: CPU-only build")
        return False
    possible = torch_cuda is not None and cuda_home is not None
    if want in ("1", "true", "yes", "on"):
        if not possible:
            raise RuntimeError(
                "RIB_EXT_CUDA=1 but the CUDA kernels cannot be built: "
                f"torch.version.cuda={torch_cuda!r}, CUDA toolkit={cuda_home!r}. Install a CUDA build "
                "of torch and set CUDA_HOME to the toolkit."
            )
        return True
    if not possible:
        log(f"CPU-only build (torch.version.cuda={torch_cuda!r}, CUDA toolkit={cuda_home!r})")
    return possible


def extensions():
    # CUDA_HOME must be set before torch.utils.cpp_extension is imported: it reads it once.
    cuda_home = find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    use_cuda = decide_cuda(torch.version.cuda, cuda_home)
    debug = os.environ.get("DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # No contraction of a * b + c into an FMA where a kernel has FMA instructions (sgd_step_'s
    # FMA clone): the kernels that match PyTorch bit for bit round where it rounds, and use
    # std::fma where it fuses.
    cxx_flags = opt + ["-fopenmp", "-ffp-contract=off"]
    sources = sorted(glob.glob("csrc/cpu/*.cpp")) + sorted(glob.glob("python/*.cpp"))
    kwargs = dict(
        include_dirs=[str(ROOT / "csrc")],
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )
    if use_cuda:
        if os.environ.get("TORCH_CUDA_ARCH_LIST"):
            why = "TORCH_CUDA_ARCH_LIST"
        else:
            arch_list, why = default_arch_list(torch)
            arch_list, dropped = supported_by_toolkit(arch_list, cuda_home)
            if dropped:
                why += f"; dropped {', '.join(dropped)}: this nvcc cannot compile for them"
            os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
        # The .cu files hold the kernels and plain-pointer launchers (csrc/cuda/launch.h); the
        # ATen side of each CUDA op is a *_host.cpp that the host compiler builds once, not nvcc
        # once per architecture.
        sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
        kwargs["include_dirs"] += pip_cuda_include_dirs(cuda_home)
        nvcc_flags = opt + ["--expt-relaxed-constexpr", "-DRIB_EXT_WITH_CUDA"]
        log(f"CUDA build: toolkit {cuda_home}, torch CUDA {torch.version.cuda}, "
            f"arch {os.environ['TORCH_CUDA_ARCH_LIST']} ({why})")
        ext = CUDAExtension(
            "rib_ext._C", sources,
            extra_compile_args={"cxx": cxx_flags + ["-DRIB_EXT_WITH_CUDA"], "nvcc": nvcc_flags},
            **kwargs,
        )
    else:
        ext = CppExtension("rib_ext._C", sources, extra_compile_args={"cxx": cxx_flags}, **kwargs)
    log(f"sources: {', '.join(sources)}")
    return [ext]


def cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    class KeptObjectsBuild(BuildExtension):
        """pip builds in a fresh temporary folder each time, so every install recompiled every
        kernel (minutes for the CUDA ones). Keeping the object files in one folder lets ninja
        rebuild only what changed (it also rebuilds when a compile command changes)."""

        def finalize_options(self):
            super().finalize_options()
            kept = os.environ.get("RIB_EXT_BUILD_DIR") or str(ROOT / "build" / "ext-objects")
            self.build_temp = str(Path(kept) / f"py{sys.version_info[0]}{sys.version_info[1]}")
            log(f"object files kept in {self.build_temp}")

    return {"build_ext": KeptObjectsBuild.with_options(use_ninja=shutil.which("ninja") is not None)}


# Metadata and dependencies live in pyproject.toml; this file only describes the extension.
setup(
    ext_modules=extensions(),
    cmdclass=cmdclass(),
)
