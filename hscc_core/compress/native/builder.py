"""Compile and load the native region kernel (``kernel.cpp``), cached per torch version.

The library is built with ``torch.utils.cpp_extension`` (gcc, ninja) into
``$HSCC_NATIVE_CACHE`` (default ``~/.cache/hscc-explorer/native``), in a folder named after the
torch version, the Python version and a hash of the sources and flags: an import loads an existing
build in milliseconds and never recompiles; a new torch or a changed source gets its own build.
``make setup`` builds it (``python -m hscc_core.compress.native build``); without it every HSCC
layer runs its PyTorch path.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

__all__ = ["NAME", "build", "cache_dir", "library_path", "load"]

NAME = "hscc_native"
SOURCES = (Path(__file__).with_name("kernel.cpp"),)
# -fopenmp: without it the OpenMP pragmas compile away and the kernel runs on one thread.
CFLAGS = ("-O3", "-fopenmp")
LDFLAGS = ("-fopenmp",)


def cache_dir() -> Path:
    """Root of the cached builds (``$HSCC_NATIVE_CACHE`` or ``~/.cache/hscc-explorer/native``)."""
    env = os.environ.get("HSCC_NATIVE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "hscc-explorer" / "native"


def _tag() -> str:
    h = hashlib.sha256()
    for src in SOURCES:
        h.update(src.read_bytes())
    h.update(" ".join(CFLAGS + LDFLAGS).encode())
    version = torch.__version__.replace("+", "_")
    return f"torch{version}-py{sys.version_info[0]}{sys.version_info[1]}-{h.hexdigest()[:12]}"


def library_path() -> Path:
    """Where this torch version's build of the current sources lives (whether built or not)."""
    return cache_dir() / _tag() / f"{NAME}.so"


def _registered() -> bool:
    return hasattr(torch.ops, NAME) and hasattr(getattr(torch.ops, NAME), "region_conv")


def load() -> Path | None:
    """Load an existing build into this process (idempotent); None when there is none."""
    path = library_path()
    if _registered():
        return path
    if not path.is_file():
        return None
    torch.ops.load_library(str(path))
    return path


def build(verbose: bool = False) -> Path:
    """Compile the kernel if this torch version has no build of the current sources, and load it.

    Raises
    ------
    RuntimeError
        When the compiler or the build fails (the PyTorch path stays usable).
    """
    from filelock import FileLock  # noqa: PLC0415
    from torch.utils import cpp_extension  # noqa: PLC0415

    path = library_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / "build.lock")):  # two processes never build the same folder
        if load() is not None:
            return path
        try:
            cpp_extension.load(name=NAME, sources=[str(s) for s in SOURCES], extra_cflags=list(CFLAGS),
                               extra_ldflags=list(LDFLAGS), build_directory=str(path.parent),
                               is_python_module=False, with_cuda=False, verbose=verbose)
        except Exception as exc:  # noqa: BLE001 - compiler missing, headers missing, link error
            raise RuntimeError(f"building the native HSCC kernel failed: {exc}") from exc
    if not _registered():
        raise RuntimeError(f"the native HSCC kernel was built at {path} but did not register its op")
    return path
