"""Helpers for fault tests (and ``benchmarks/faults.py``): the ``hscc`` command in a child process,
optionally without root's override of file permissions (so read-only caches are read-only even
when the tests run as root), read-only folders, and crafted files."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--arch", "tiny", "--input-size", "32", "--epochs", "2", "--quiet"]


def _without_override() -> list[str]:
    # root ignores file modes (CAP_DAC_OVERRIDE); dropping the capability from the child's bounding
    # set makes `chmod a-w` bind it as it binds any user.
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a folder read-only for the child")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


def hscc(*args: str, read_only: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m hscc_core ARGS`` from the repository root; stdout and stderr as text."""
    cmd = [*(_without_override() if read_only else []), sys.executable, "-m", "hscc_core", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def python(code: str, *, read_only: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -c CODE`` like :func:`hscc`."""
    cmd = [*(_without_override() if read_only else []), sys.executable, "-c", code]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def set_read_only(path: Path, read_only: bool = True) -> None:
    """``chmod -R a-w`` (or back to ``u+w``) on ``path`` and everything under it."""
    for dirpath, dirs, files in os.walk(path):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirs + files)]:
            mode = os.lstat(name).st_mode
            if os.path.islink(name):
                continue
            os.chmod(name, (mode & ~0o222) if read_only else (mode | 0o200))


def assert_one_error_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, exactly one ``hscc: error:`` line, no traceback; returns that line."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("hscc: error: ")]
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def png_claiming(width: int, height: int) -> bytes:
    """A 1 x 1 grey PNG whose header claims ``width`` x ``height`` (a decoder must not be reached)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)
