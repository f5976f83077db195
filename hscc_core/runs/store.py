"""Run store: a content-addressed, crash-safe disk cache of runs and artefacts.

Every compression run (and every expensive artefact: calibration statistics, checkpoints) is
stored under a key that is a hash of what produced it (:func:`cache_key`), so a repeated request
is a cache hit and no user-supplied string ever becomes a path.

On-disk layout under ``root``::

    runs/<key>/run.json                 the run: canonical JSON, ``_checksum`` field (see below)
    runs/<key>/arrays-<sha16>.npz       its arrays (plain .npy members, never pickled)
    blobs/<kind>/<key>.<ext>            other artefacts (``stats/<key>.npz``, ``ckpt/<key>.pt``)
    blobs/<kind>/<key>.<ext>.sha256     sidecar checksum, ``sha256sum`` format, written last
    locks/<key>.lock                    one inter-process lock per key, held during writes and
                                        while a sweep computes the key (its claim)
    quarantine/<key>-<ns>/              corrupt run entries moved aside (safe to delete)
    quarantine/blobs/<kind>/<name>-<ns> corrupt blobs moved aside, with their sidecars

``_checksum`` in ``run.json`` is ``{"algorithm": "sha256", "arrays": A, "body": B}`` where
``A = sha256(bytes of the arrays file)`` and ``B = sha256(canonical_json(run without
"_checksum"))``; ``canonical_json`` is ``json.dumps(sort_keys=True, separators=(",", ":"),
allow_nan=False)`` (ASCII, NaN/inf stored as ``null``). The file's exact text is
``'{"_checksum":' + canonical_json(checksum) + ',' + canonical_json(body)[1:] + '\\n'``: the
checksum member first, so a reader recovers the body's canonical text by slicing and verifies it
without re-serialising. The arrays file is named by its own checksum (``arrays-{A[:16]}.npz``), so
a rewrite never touches the file the current ``run.json`` points at: arrays are written first,
``run.json`` is replaced last (temporary file in the same directory, fsync, ``os.replace``), and a
crash at any moment leaves either the previous complete entry or the new one readable.

A corrupt or partial entry (unparsable JSON, checksum mismatch, missing arrays) is re-checked
under the key's lock (a concurrent writer may just have swapped files), then reported once per
key per process with a :class:`StoreWarning` naming where it went, moved to ``quarantine/``
(never deleted) and treated as absent, so the caller recomputes it. Listing reads every
``run.json`` (about 50 us each: 10,000 runs list in about half a second, see
``tests/test_store.py``), so there is no index to fall out of step.

A read-only cache (a shared copy, a read-only mount) serves everything that only reads: nothing
is created until something is written, and a corrupt entry there is reported, left in place and
treated as absent. Writing to it (a new run or blob) raises :class:`StoreError` naming the folder.

Claims (:meth:`RunStore.try_claim`) let concurrent sweeps on one cache split the work: a sweep
holds the key's lock while the run is computed elsewhere (a worker process, a Ray task), so
another sweep skips that key and picks the stored run up afterwards. The lock is an OS file lock
(``flock``): a holder that dies, even by ``kill -9``, releases it, so no claim goes stale.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import io
import json
import math
import os
import re
import secrets
import shutil
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

__all__ = [
    "Claim",
    "RunStore",
    "StoreError",
    "StoreWarning",
    "cache_key",
    "canonical_json",
    "jsonable",
    "validate_key",
]

KEY_LENGTH = 24
_GENERATION = ".generation"  # touched after every write or removal of a run (RunStore.generation)
_KEY_RE = re.compile(r"[0-9a-f]{16,64}")
_KIND_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_EXT_RE = re.compile(r"[a-z0-9]{1,8}")
_ARRAY_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_HEADER_RE = re.compile(
    rb'\{"_checksum":\{"algorithm":"sha256","arrays":"([0-9a-f]{64})","body":"([0-9a-f]{64})"\},'
)
_REQUIRED_RUN_FIELDS = ("method", "config", "data_fingerprint")
_CHUNK = 1 << 20
# A fixed zip timestamp makes identical arrays produce identical bytes (and file names).
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

_reported: set[tuple[str, str]] = set()
_reported_guard = threading.Lock()


class StoreWarning(UserWarning):
    """A corrupt or partial store entry was found, set aside and will be recomputed."""


class StoreError(ValueError):
    """The cache folder cannot be used for what was asked (not a folder, not writable)."""


class _Corrupt(Exception):
    """Internal: an entry failed verification (the message says how)."""


# --------------------------------------------------------------------------------------------
# JSON and keys


def jsonable(obj: Any, *, strict: bool = False, _where: str = "$") -> Any:
    """Convert ``obj`` to plain JSON types (dict with str keys, list, str, int, float, bool, None).

    Parameters
    ----------
    obj
        Nested dicts, lists, tuples, numpy scalars and arrays, dataclasses, enums and plain
        scalars. Integer dict keys become strings (as JSON would make them).
    strict
        If False, non-finite floats (NaN, +-inf) become ``None``; if True they raise
        ``ValueError`` (used for cache keys, where a silent ``None`` would alias configs).

    Returns
    -------
    Any
        A structure ``json.dumps(..., allow_nan=False)`` accepts and that survives a JSON round
        trip unchanged.

    Raises
    ------
    TypeError
        For anything else (paths, sets, arbitrary objects), naming where it was found.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, enum.Enum):
        return jsonable(obj.value, strict=strict, _where=_where)
    if isinstance(obj, np.generic):
        return jsonable(obj.item(), strict=strict, _where=_where)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isfinite(obj):
            return float(obj)
        if strict:
            raise ValueError(f"non-finite float {obj!r} at {_where} cannot be part of a cache key")
        return None
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), strict=strict, _where=_where)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if isinstance(k, (bool, np.bool_)) or not isinstance(k, (str, int, np.integer)):
                raise TypeError(f"dict key {k!r} at {_where} is not a string")
            ks = str(k)
            out[ks] = jsonable(v, strict=strict, _where=f"{_where}.{ks}")
        return out
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, strict=strict, _where=f"{_where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(f"{type(obj).__name__} at {_where} is not JSON-serialisable")


def canonical_json(obj: Any, *, strict: bool = False) -> str:
    """Canonical JSON of ``obj``: sorted keys, no spaces, ASCII, NaN as null (:func:`jsonable`)."""
    return _dumps(jsonable(obj, strict=strict))


def _dumps(plain: Any) -> str:
    # Canonical text of data that is already plain JSON (skips the conversion walk).
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), allow_nan=False)


def cache_key(kind: str, payload: Mapping[str, Any]) -> str:
    """Content address of a computation.

    Parameters
    ----------
    kind
        What is computed (``"run"``, ``"stats"``, ``"ckpt"``...); part of the hash, so equal
        payloads of different kinds never share a key.
    payload
        Everything the result depends on: config, model fingerprint, data fingerprint, algorithm
        version. Must not contain the field ``"kind"``; non-finite floats are rejected.

    Returns
    -------
    str
        The first 24 hex digits of ``sha256(canonical_json({"kind": kind, **payload}))``.
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError("kind must be a non-empty string")
    if not isinstance(payload, Mapping):
        raise TypeError("payload must be a mapping")
    if "kind" in payload:
        raise ValueError("payload must not contain the field 'kind' (it is added by cache_key)")
    text = canonical_json({"kind": kind, **payload}, strict=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:KEY_LENGTH]


def validate_key(key: str) -> str:
    """Return ``key`` if it is 16 to 64 lower-case hex digits, else raise ``ValueError``."""
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise ValueError(f"invalid cache key {key!r}: expected 16 to 64 lower-case hex digits")
    return key


def _validate_name(value: str, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"invalid {what} {value!r}: must match {pattern.pattern}")
    return value


# --------------------------------------------------------------------------------------------
# Files


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Digests of large files by file state (device, inode, size, mtime): a sweep checks the 230 MB
# checkpoint once per run key, and hashing it each time made a fully cached sweep take 11 s.
# Blobs are replaced by rename (a new inode) and any write changes mtime, so a changed file is
# always hashed again.
_DIGESTS: dict[tuple, str] = {}


def _sha256_file(path: Path) -> str:
    st = os.stat(path)
    ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if ident in _DIGESTS:
        return _DIGESTS[ident]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    if len(_DIGESTS) > 1024:
        _DIGESTS.clear()
    _DIGESTS[ident] = digest = h.hexdigest()
    return digest


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable on POSIX; directories cannot be opened on Windows.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_path(directory: Path, stem: str, suffix: str = "") -> Path:
    return directory / f".tmp-{stem}-{os.getpid()}-{secrets.token_hex(4)}{suffix}"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    tmp = _tmp_path(path.parent, path.name)
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _npz_bytes(arrays: Mapping[str, Any]) -> bytes:
    """Serialise arrays as an ``.npz`` (what ``np.savez`` writes), deterministically, no pickle."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in sorted(arrays):
            _validate_name(name, _ARRAY_NAME_RE, "array name")
            arr = np.asarray(arrays[name])
            if arr.dtype.hasobject:
                raise ValueError(f"array {name!r} has dtype object; only plain dtypes are stored")
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, arr, allow_pickle=False)
    return buf.getvalue()


def _load_npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def _arrays_name(arrays_sha: str) -> str:
    return f"arrays-{arrays_sha[:16]}.npz"


# --------------------------------------------------------------------------------------------
# The store


class RunStore:
    """Content-addressed store of runs (JSON + arrays) and blobs under one root folder.

    Parameters
    ----------
    root
        The cache folder (created if missing). Only validated hashes, kinds and extensions are
        joined to it.

    Notes
    -----
    Safe for several threads and processes: writes hold the key's :class:`filelock.FileLock`
    (re-entrant within a thread), reads take no lock unless verification fails.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        # Nothing is created here: a read-only cache must serve reads. Folders appear on write.
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"the cache folder {self.root} is a file, not a folder: choose another "
                             "cache folder")
        self.runs_dir = self.root / "runs"
        self._runs_str = os.fspath(self.runs_dir)
        self.blobs_dir = self.root / "blobs"
        self.locks_dir = self.root / "locks"
        self.quarantine_dir = self.root / "quarantine"

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Turn a failed write into one :class:`StoreError` that names the cache folder."""
        try:
            yield
        except (StoreError, Timeout):  # filelock's Timeout is an OSError: another holder, not the disk
            raise
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise StoreError(f"the cache folder {self.root} is not writable ({reason}, writing {what}): "
                             "use a writable cache folder") from None

    def _mkdir(self, path: Path, what: str) -> None:
        with self._writing(what):
            path.mkdir(parents=True, exist_ok=True)

    # ---- locking ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, key: str, timeout: float = -1) -> Iterator[None]:
        """Hold the inter-process lock of ``key`` (re-entrant in one thread).

        Use it for "check, compute, put" so that racing processes compute once::

            with store.lock(key):
                if not store.has_run(key):
                    store.put_run(key, *compute())

        Parameters
        ----------
        key
            A cache key.
        timeout
            Seconds to wait; negative waits forever. Raises ``filelock.Timeout`` when exceeded.
        """
        lock = self._acquire(key, timeout)
        try:
            yield
        finally:
            lock.release()

    def _acquire(self, key: str, timeout: float) -> FileLock:
        validate_key(key)
        self._mkdir(self.locks_dir, "a lock")
        # is_singleton: one lock object per path and process, so nested use does not deadlock;
        # it must be built with the same arguments each time, hence the timeout on acquire.
        lock = FileLock(self.locks_dir / f"{key}.lock", is_singleton=True)
        with self._writing("a lock"):
            lock.acquire(timeout=timeout)
        return lock

    def try_claim(self, key: str) -> "Claim | None":
        """Claim ``key`` for computing it, or return ``None`` when another process holds it.

        The claim is the key's lock (:meth:`lock`), so a concurrent ``get_or_compute`` or another
        sweep waits for it or skips the key; call ``release()`` once the run is stored. A process
        that dies releases its claims with it (OS file locks).
        """
        try:
            return Claim(self._acquire(key, timeout=0))
        except Timeout:
            return None

    @contextlib.contextmanager
    def _lock_if_writable(self, key: str) -> Iterator[bool]:
        """The key's lock when the cache is writable (yields True), else nothing (False)."""
        try:
            lock = self._acquire(key, timeout=-1)
        except StoreError:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    # ---- corruption handling ---------------------------------------------------------------

    def _report(self, what: str, reason: str, outcome: str) -> None:
        token = (str(self.root.resolve()), what)
        with _reported_guard:
            if token in _reported:
                return
            _reported.add(token)
        warnings.warn(f"cache entry {what} in {self.root} is corrupt ({reason}); {outcome}",
                      StoreWarning, stacklevel=5)  # usually the caller of get_run / verify_blob

    def _move_aside(self, what: str, reason: str, paths: list[Path], dest: Path, locked: bool) -> Path | None:
        """Move ``paths`` into the new quarantine folder ``dest`` and report it (nothing is
        deleted); the caller holds the key's lock if ``locked``.

        Returns ``dest``, or ``None`` when the cache is not writable: the entry then stays where
        it is and is treated as absent.
        """
        if locked:
            try:
                # One rename per path (a run's whole folder at once), so no reader sees half.
                dest.mkdir(parents=True)
                for p in paths:
                    if os.path.lexists(p):
                        os.replace(p, dest / p.name)
            except OSError:
                pass
            else:
                self._report(what, reason, f"moved to {dest}, will recompute")
                return dest
        self._report(what, reason, "left in place (the cache is not writable) and treated as absent")
        return None

    def _discard_run(self, key: str, reason: str, locked: bool = True) -> None:
        """Report and quarantine a corrupt run entry (caller holds the key's lock if ``locked``)."""
        self._move_aside(f"run {key}", reason, [self.runs_dir / key],
                         self.quarantine_dir / f"{key}-{time.time_ns()}", locked)

    # ---- runs ------------------------------------------------------------------------------

    def _run_dir(self, key: str) -> Path:
        return self.runs_dir / validate_key(key)

    def _read_run(self, key: str, *, read_arrays: bool) -> tuple[dict, bytes | None] | None:
        """Read and verify one entry; ``None`` if absent, ``_Corrupt`` if it fails a check."""
        # Plain string paths: this runs once per entry when listing, so it is kept lean.
        d = f"{self._runs_str}{os.sep}{validate_key(key)}{os.sep}"
        try:
            with open(d + "run.json", "rb") as fh:
                raw = fh.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _Corrupt(f"run.json unreadable: {exc}") from exc
        # The file is the checksum member followed by the canonical body's members, so the
        # body's canonical text is recovered by slicing: no re-serialisation when listing.
        m = _HEADER_RE.match(raw)
        if m is None:
            raise _Corrupt("run.json has no valid _checksum header")
        arrays_sha, body_sha = m.group(1).decode(), m.group(2).decode()
        body_bytes = b"{" + raw[m.end() :].removesuffix(b"\n")
        if _sha256_bytes(body_bytes) != body_sha:
            raise _Corrupt("run.json checksum mismatch")
        try:
            doc = json.loads(body_bytes)
        except ValueError as exc:  # cannot happen for a matching checksum unless written so
            raise _Corrupt("run.json is not valid JSON") from exc
        if not isinstance(doc, dict) or doc.get("cache_key") != key:
            raise _Corrupt("run.json belongs to another key")
        arrays_path = d + _arrays_name(arrays_sha)
        if not read_arrays:
            try:
                os.stat(arrays_path)
            except OSError as exc:
                raise _Corrupt("arrays file missing") from exc
            return doc, None
        try:
            with open(arrays_path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise _Corrupt("arrays file missing or unreadable") from exc
        if _sha256_bytes(data) != arrays_sha:
            raise _Corrupt("arrays checksum mismatch")
        return doc, data

    def _get(self, key: str, *, read_arrays: bool) -> tuple[dict, bytes | None] | None:
        try:
            return self._read_run(key, read_arrays=read_arrays)
        except _Corrupt:
            pass
        # A writer may have swapped files between our reads: decide under its lock.
        with self._lock_if_writable(key) as locked:
            try:
                return self._read_run(key, read_arrays=read_arrays)
            except _Corrupt as exc:
                self._discard_run(key, str(exc), locked)
                return None

    def put_run(
        self, key: str, run: Mapping[str, Any], arrays: Mapping[str, Any] | None = None
    ) -> None:
        """Store a run atomically (arrays first, ``run.json`` last), replacing any previous one.

        Parameters
        ----------
        key
            The run's cache key (from :func:`cache_key`).
        run
            JSON-like dict with at least ``method``, ``config`` and ``data_fingerprint``;
            ``cache_key`` is added (or must equal ``key``). NaN/inf are stored as ``null``.
        arrays
            Name -> numeric array (names: letters, digits, ``_.-``). Object arrays are refused.
        """
        self._put_run(key, run, arrays)

    def _put_run(self, key: str, run: Mapping[str, Any], arrays: Mapping[str, Any] | None) -> dict:
        validate_key(key)
        if not isinstance(run, Mapping):
            raise TypeError("run must be a dict")
        if "_checksum" in run:
            raise ValueError("run must not contain the reserved field '_checksum'")
        missing = [f for f in _REQUIRED_RUN_FIELDS if f not in run]
        if missing:
            raise ValueError(f"run lacks required field(s) {missing}")
        if run.get("cache_key", key) != key:
            raise ValueError(f"run['cache_key']={run['cache_key']!r} does not match key {key!r}")
        body = jsonable({**run, "cache_key": key})
        body_text = canonical_json(body)
        npz = _npz_bytes(arrays or {})
        arrays_sha = _sha256_bytes(npz)
        checksum = {
            "algorithm": "sha256",
            "arrays": arrays_sha,
            "body": _sha256_bytes(body_text.encode("ascii")),
        }
        # "_checksum" goes first, then the body's canonical members (see the module docstring).
        doc_text = '{"_checksum":' + _dumps(checksum) + "," + body_text[1:] + "\n"
        d = self._run_dir(key)
        with self.lock(key):
            keep = _arrays_name(arrays_sha)
            with self._writing("a run"):
                d.mkdir(parents=True, exist_ok=True)
                _atomic_write_bytes(d / keep, npz)
                _atomic_write_bytes(d / "run.json", doc_text.encode("ascii"))
            # Old arrays files and temporaries of crashed writers are now unreferenced.
            for p in d.iterdir():
                if p.name not in (keep, "run.json"):
                    with contextlib.suppress(OSError):
                        p.unlink()
        self._touch_generation()
        return json.loads(body_text)

    def get_run(self, key: str) -> dict | None:
        """The verified run stored under ``key`` (without ``_checksum``), or ``None``.

        A corrupt entry is reported once, set aside and reported as ``None``.
        """
        got = self._get(key, read_arrays=True)
        return None if got is None else got[0]

    def get_arrays(self, key: str, required: Iterable[str] = ()) -> dict[str, np.ndarray] | None:
        """The verified arrays of ``key`` (loaded with ``allow_pickle=False``), or ``None``.

        An entry whose arrays np.load rejects, or that lacks one of the ``required`` names
        (checksums can be forged, names cannot be guessed by a reader), is set aside as corrupt.
        """
        entry = self.get_entry(key, required)
        return None if entry is None else entry[1]

    def get_entry(self, key: str, required: Iterable[str] = ()) -> tuple[dict, dict[str, np.ndarray]] | None:
        """``(run, arrays)`` of ``key`` from one verified write, or ``None`` (see :meth:`get_arrays`).

        Calling :meth:`get_run` then :meth:`get_arrays` may pair a run with the arrays of a later
        rewrite of the same key; this reads both from one snapshot.
        """
        got = self._get(key, read_arrays=True)
        if got is None:
            return None
        try:
            arrays = _load_npz(got[1])
            missing = [name for name in required if name not in arrays]
            if missing:
                raise KeyError(f"no array named {', '.join(missing)}")
            return got[0], arrays
        except (ValueError, OSError, zipfile.BadZipFile, KeyError) as exc:
            # The bytes matched their checksum, so the writer stored something unusable.
            with self._lock_if_writable(key) as locked:
                self._discard_run(key, f"arrays unreadable: {exc}", locked)
            return None

    def has_run(self, key: str) -> bool:
        """True if a verified run exists under ``key`` (arrays checked for presence only)."""
        return self._get(key, read_arrays=False) is not None

    def get_or_compute(
        self, key: str, compute: Callable[[], tuple[Mapping[str, Any], Mapping[str, Any] | None]]
    ) -> tuple[dict, bool]:
        """Return ``(run, cached)``: the stored run, or compute, store and return it.

        ``compute()`` returns ``(run, arrays)``. It runs at most once across racing threads and
        processes (check, lock, re-check, compute, put). The returned run is what the store holds
        (JSON round trip, ``cache_key`` added), so fresh and cached results compare equal.
        """
        run = self.get_run(key)
        if run is not None:
            return run, True
        with self.lock(key):
            run = self.get_run(key)
            if run is not None:
                return run, True
            new_run, arrays = compute()
            return self._put_run(key, new_run, arrays), False

    def generation(self) -> int:
        """A number that changes whenever a run is written or removed, also a run rewritten under its
        own key (``hscc runs --time`` does that): the modification time in ns of ``runs/.generation``,
        0 before the first write. Readers that cache by the key listing add it to their cache key."""
        try:
            return os.stat(self.runs_dir / _GENERATION).st_mtime_ns
        except OSError:
            return 0

    def _touch_generation(self) -> None:
        # After the write it announces. A read-only store never gets here (writes raise first).
        path = self.runs_dir / _GENERATION
        with contextlib.suppress(OSError):
            before = self.generation()
            path.touch()
            now = time.time_ns()  # strictly past the last value, whatever the clock's granularity
            os.utime(path, ns=(now, max(now, before + 1)))

    def keys(self) -> list[str]:
        """Names of the run folders, sorted: cheap, unverified (use :meth:`has_run` to check)."""
        try:
            entries = list(os.scandir(self.runs_dir))
        except FileNotFoundError:
            return []
        return sorted(e.name for e in entries if _KEY_RE.fullmatch(e.name) and e.is_dir())

    def iter_runs(
        self,
        method: str | None = None,
        data_fingerprint: str | None = None,
        *,
        verify_arrays: bool = False,
    ) -> Iterator[dict]:
        """Yield verified runs in key order, optionally filtered.

        Parameters
        ----------
        method, data_fingerprint
            Keep only runs whose field equals this value (``None``: no filter).
        verify_arrays
            Also hash each arrays file (slower); by default only its presence is checked and
            the full check happens in :meth:`get_run` / :meth:`get_arrays`.
        """
        for key in self.keys():
            got = self._get(key, read_arrays=verify_arrays)
            if got is None:
                continue
            run = got[0]
            if method is not None and run.get("method") != method:
                continue
            if data_fingerprint is not None and run.get("data_fingerprint") != data_fingerprint:
                continue
            yield run

    def list_runs(
        self,
        method: str | None = None,
        data_fingerprint: str | None = None,
        *,
        verify_arrays: bool = False,
    ) -> list[dict]:
        """:meth:`iter_runs` as a list."""
        return list(self.iter_runs(method, data_fingerprint, verify_arrays=verify_arrays))

    def prune(self, keys_or_predicate: Iterable[str] | Callable[[dict], bool]) -> int:
        """Delete runs by key or by ``predicate(run) -> bool``; return how many were removed."""
        if callable(keys_or_predicate):
            keys = [r["cache_key"] for r in self.iter_runs() if keys_or_predicate(r)]
        elif isinstance(keys_or_predicate, str):
            keys = [keys_or_predicate]
        else:
            keys = list(keys_or_predicate)
        removed = 0
        for key in keys:
            d = self._run_dir(key)
            with self.lock(key):
                if not d.is_dir():
                    continue
                # Rename first so the entry vanishes in one step even if rmtree is interrupted.
                trash = _tmp_path(self.runs_dir, f"trash-{key}")
                os.replace(d, trash)
                shutil.rmtree(trash, ignore_errors=True)
                removed += 1
        if removed:
            self._touch_generation()
        return removed

    def size_bytes(self) -> int:
        """Total size of the files under the store root (runs, blobs, locks, quarantine)."""
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_size
        return total

    # ---- blobs -----------------------------------------------------------------------------

    def blob_path(self, kind: str, key: str, ext: str) -> Path:
        """Where the blob ``(kind, key, ext)`` lives: ``root/blobs/<kind>/<key>.<ext>``.

        Check it with :meth:`verify_blob` before loading it.
        """
        _validate_name(kind, _KIND_RE, "blob kind")
        _validate_name(ext, _EXT_RE, "blob extension")
        return self.blobs_dir / kind / f"{validate_key(key)}.{ext}"

    def has_blob(self, kind: str, key: str, ext: str) -> bool:
        """True if the blob and its sidecar exist (not verified: see :meth:`verify_blob`)."""
        path = self.blob_path(kind, key, ext)
        return path.is_file() and _sidecar(path).is_file()

    def put_blob_file(self, kind: str, key: str, ext: str, writer: Callable[[Path], None]) -> Path:
        """Create a blob atomically: ``writer(tmp_path)`` writes the file, then it is renamed.

        The temporary path is in the blob's folder and ends with ``.<ext>`` (so ``np.savez``
        does not append a suffix); ``torch.save(obj, p)`` and ``np.savez(p, ...)`` both fit.
        The sidecar ``<key>.<ext>.sha256`` is written after the blob. Returns the blob path.
        """
        path = self.blob_path(kind, key, ext)
        self._mkdir(path.parent, f"a {kind} file")
        with self.lock(key):
            tmp = _tmp_path(path.parent, key, f".{ext}")
            try:
                with self._writing(f"a {kind} file"):
                    # Fails early (before a long writer runs) when the folder is not writable.
                    open(tmp, "xb").close()
                    tmp.unlink()
                writer(tmp)
                if not tmp.is_file():
                    raise RuntimeError(f"blob writer did not create {tmp.name}")
                with self._writing(f"a {kind} file"):
                    with open(tmp, "rb") as fh:
                        os.fsync(fh.fileno())
                    digest = _sha256_file(tmp)
                    os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            with self._writing(f"a {kind} checksum"):
                _atomic_write_bytes(_sidecar(path), f"{digest}  {path.name}\n".encode("ascii"))
            # Temporaries that crashed writers of this key left behind (we hold its lock).
            for stale in path.parent.glob(f".tmp-{key}*"):
                with contextlib.suppress(OSError):
                    stale.unlink()
        return path

    def _check_blob(self, path: Path) -> bool | None:
        """True if valid, None if absent, raise ``_Corrupt`` otherwise."""
        side = _sidecar(path)
        if not path.exists() and not side.exists():
            return None
        try:
            expected = side.read_text("ascii").split()[0]
        except (OSError, UnicodeDecodeError, IndexError) as exc:
            raise _Corrupt("checksum sidecar missing or unreadable") from exc
        try:
            actual = _sha256_file(path)
        except OSError as exc:
            raise _Corrupt("blob missing") from exc
        if actual != expected:
            raise _Corrupt("blob checksum mismatch")
        return True

    def verify_blob(self, kind: str, key: str, ext: str) -> bool:
        """True if the blob exists and matches its sidecar checksum.

        An absent blob gives False quietly; a corrupt or half-written one is reported once,
        moved to the quarantine folder (never deleted), and gives False, so the caller
        recomputes it.
        """
        path = self.blob_path(kind, key, ext)
        try:
            return bool(self._check_blob(path))
        except _Corrupt:
            pass
        with self._lock_if_writable(key) as locked:
            try:
                return bool(self._check_blob(path))
            except _Corrupt as exc:
                self._quarantine_blob(path, kind, str(exc), locked)
                return False

    def quarantine_blob(self, kind: str, key: str, ext: str, reason: str) -> Path | None:
        """Move a blob that verified but cannot be used (a damaged checkpoint, an ``.npz``
        without its arrays) and its sidecar to the quarantine folder, and report it.

        Returns the folder it went to, or ``None`` when the cache is not writable (it stays).
        """
        path = self.blob_path(kind, key, ext)
        with self._lock_if_writable(key) as locked:
            return self._quarantine_blob(path, kind, reason, locked)

    def _quarantine_blob(self, path: Path, kind: str, reason: str, locked: bool) -> Path | None:
        dest = self.quarantine_dir / "blobs" / kind / f"{path.name}-{time.time_ns()}"
        return self._move_aside(f"blob {kind}/{path.name}", reason, [path, _sidecar(path)], dest, locked)

    def get_or_compute_blob(
        self, kind: str, key: str, ext: str, writer: Callable[[Path], None]
    ) -> tuple[Path, bool]:
        """Return ``(path, cached)`` of a verified blob, writing it with ``writer`` if needed."""
        if self.verify_blob(kind, key, ext):
            return self.blob_path(kind, key, ext), True
        with self.lock(key):
            if self.verify_blob(kind, key, ext):
                return self.blob_path(kind, key, ext), True
            return self.put_blob_file(kind, key, ext, writer), False

    def load_or_compute_blob(
        self, kind: str, key: str, ext: str, writer: Callable[[Path], None], loader: Callable[[Path], Any]
    ) -> tuple[Any, bool]:
        """Return ``(loader(path), cached)``, writing the blob first if needed.

        A blob whose checksum holds but that ``loader`` cannot read (an ``.npz`` without the
        expected arrays: ``KeyError``; a bad format: ``ValueError``, ``OSError``) is quarantined
        and written again once; a second failure propagates.
        """
        path, cached = self.get_or_compute_blob(kind, key, ext, writer)
        try:
            return loader(path), cached
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            if not cached:
                raise
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            reason = f"unreadable: {type(exc).__name__}" + (f": {detail}" if detail else "")
            if self.quarantine_blob(kind, key, ext, reason) is None:
                raise StoreError(f"the {kind} file {path} in the cache is {reason}, and the cache folder "
                                 f"{self.root} is not writable, so it cannot be rebuilt") from None
        path, cached = self.get_or_compute_blob(kind, key, ext, writer)
        return loader(path), cached


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


class Claim:
    """A held claim on a run key (see :meth:`RunStore.try_claim`); ``release()`` it once the run
    is stored. Also a context manager."""

    def __init__(self, lock: FileLock) -> None:
        self._lock: FileLock | None = lock

    def release(self) -> None:
        """Give the key back (idempotent)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
