"""Fault injection against the run store and the CLI; writes the table of ``docs/reliability.md``.

Every fault is injected for real on the embedded phantom with the tiny CNN (``--arch tiny
--input-size 64``): processes are killed with SIGKILL at each write step of the store, files are
truncated and bit-flipped, the cache is made read-only (for root: by dropping CAP_DAC_OVERRIDE with
``setpriv``), writers and sweeps race, the baseline is retrained, and hostile names and files are fed
in. Each row says what the tool did and whether anything stored was lost; the script exits 1 if
anything was.

Usage::

    python benchmarks/faults.py [--work DIR] [--out docs/reliability.md] [--flips 20]

``--work`` keeps the phantom and the trained tiny baseline between invocations (default: a
temporary folder).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402

from faultkit import hscc, png_claiming, set_read_only  # noqa: E402 - the tests' helpers
from hscc_core.runs import store as store_mod  # noqa: E402
from hscc_core.runs.store import RunStore, StoreWarning  # noqa: E402

TINY = ["--arch", "tiny", "--input-size", "64", "--epochs", "3", "--quiet"]
VOLATILE = ("seconds", "cached", "latency_ms", "speedup")  # timings: the rest must be reproduced exactly
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
ROWS: list[dict] = []


def row(fault: str, how: str, cases: int, did: str, lost: int) -> None:
    ROWS.append({"fault": fault, "how": how, "cases": cases, "did": did, "lost": lost})
    print(f"[{'LOST' if lost else 'ok'}] {fault}: {did}", file=sys.stderr, flush=True)


def stable(run: dict) -> str:
    return json.dumps({k: v for k, v in run.items() if k not in VOLATILE}, sort_keys=True)


@contextlib.contextmanager
def caught():
    """Record StoreWarnings as a new process would: digests and already-reported entries forgotten."""
    store_mod._DIGESTS.clear()
    store_mod._reported.clear()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always", StoreWarning)
        yield record


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- kill -9 at each write step -----------------------------------------------------------------

CHILD = r"""
import os, signal, sys
import numpy as np
import hscc_core.runs.store as sm

root, what, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
events = []

def point(label):
    events.append(label)
    if len(events) - 1 == step:
        os.kill(os.getpid(), signal.SIGKILL)

real_replace, real_fsync, real_atomic = os.replace, os.fsync, sm._atomic_write_bytes

def replace(src, dst):
    point(f"before renaming onto {os.path.basename(dst)}")
    real_replace(src, dst)
    point(f"after renaming onto {os.path.basename(dst)}")

def fsync(fd):
    point("before an fsync")
    real_fsync(fd)

def atomic(path, data):
    if len(events) == step:  # die with half the bytes in the temporary file
        with open(sm._tmp_path(path.parent, path.name), "xb") as fh:
            fh.write(data[: len(data) // 2])
    point(f"writing {path.name} (half written)")
    real_atomic(path, data)

os.replace, os.fsync, sm._atomic_write_bytes = replace, fsync, atomic
store = sm.RunStore(root)
key = "ab" * 12
if what == "run":
    store.put_run(key, {"method": "m", "config": {}, "data_fingerprint": "d", "v": 2}, {"a": np.full(1000, 2.0)})
else:
    def writer(p):
        with open(p, "wb") as fh:
            fh.write(b"2" * 50000)
            fh.flush()
            point("blob writer half-way")
            fh.write(b"2" * 50000)
    store.put_blob_file("stats", key, "npz", writer)
print("\n".join(events))
"""


def kill_steps(work: Path) -> None:
    key = "ab" * 12
    for what in ("run", "blob"):
        labels = subprocess.run([sys.executable, "-c", CHILD, str(work / "dry"), what, "-1"], env=ENV,
                                capture_output=True, text=True, check=True).stdout.splitlines()
        outcomes: dict[str, int] = {}
        lost = 0
        for step in range(len(labels)):
            root = work / f"kill-{what}-{step}"
            store = RunStore(root)
            if what == "run":  # an existing entry being rewritten
                store.put_run(key, {"method": "m", "config": {}, "data_fingerprint": "d", "v": 1}, {"a": np.full(1000, 1.0)})
            proc = subprocess.run([sys.executable, "-c", CHILD, str(root), what, str(step)], env=ENV, capture_output=True)
            assert proc.returncode == -signal.SIGKILL, proc
            store = RunStore(root)
            with caught() as record:
                if what == "run":
                    got, arrays = store.get_run(key), store.get_arrays(key)
                    version = None if got is None else got["v"]
                    whole = got is not None and float(arrays["a"][0]) == version and (arrays["a"] == version).all()
                    seen = {1: "previous entry served", 2: "new entry served"}.get(version, "entry missing")
                    lost += int(not whole)
                else:
                    ok = store.verify_blob("stats", key, "npz")
                    path = store.blob_path("stats", key, "npz")
                    whole = not ok or path.read_bytes() == b"2" * 100000
                    seen = "complete blob served" if ok else "absent: recomputed on next use"
                    lost += int(not whole)
            claim = store.try_claim(key)  # the dead writer's lock died with it
            if claim is None:
                lost += 1
                seen += ", lock still held"
            else:
                claim.release()
            label = seen + (" (incomplete file set aside, reported)" if record else "")
            outcomes[label] = outcomes.get(label, 0) + 1
        did = "; ".join(f"{n}x {o}" for o, n in outcomes.items()) + "; lock free every time"
        how = ("SIGKILL of the writing process at each of its %d write steps (%s)"
               % (len(labels), ", ".join(dict.fromkeys(labels))))
        row(f"kill -9 during {'a run rewrite' if what == 'run' else 'a new blob'}", how, len(labels), did, lost)


def kill_sweep(work: Path, data_args: list[str], reference: dict[str, str]) -> None:
    cache = work / "kill-sweep"
    shutil.copytree(work / "cache", cache, ignore=shutil.ignore_patterns("runs", "quarantine"))
    args = ["sweep", *data_args, "--cache-dir", str(cache), *SWEEP, "--json"]
    proc = subprocess.Popen([sys.executable, "-m", "hscc_core", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = RunStore(cache)
    while len(store.keys()) < 3 and proc.poll() is None:  # the original's run and two compressed runs
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with caught():
        done_before = sum(r["method"] != "original" for r in store.list_runs())
    again = hscc(*args)
    out = json.loads(again.stdout)
    lost = sum(stable(r) != reference[r["cache_key"]] for r in out["runs"]) + (again.returncode != 0)
    lost += int(out["computed"] + out["cached"] != len(reference))
    row("kill -9 of a whole sweep", f"`hscc sweep` killed while its third run was being stored ({done_before} of "
        f"{len(reference)} complete in the store); the same command run again", 1,
        f"rerun: {out['cached']} from the cache, {out['computed']} computed, all {len(out['runs'])} equal to an "
        f"undisturbed sweep's; {sum('warning' in ln for ln in again.stderr.splitlines())} warnings", lost)


# ---- truncation and bit flips ----------------------------------------------------------------------

def damaged(data: bytes, how: str, rng: random.Random) -> bytes:
    """``data`` cut to half its length (``how="truncate"``) or with one random bit flipped."""
    if how == "truncate":
        return data[: len(data) // 2]
    out = bytearray(data)
    out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def damage_runs(work: Path, ws, reference: dict[str, str], flips: int) -> None:
    from hscc_core.runs.config import RunConfig
    from hscc_core.runs.pipeline import compress_run

    rng = random.Random(0)
    cache = ws.store.root
    configs = {r["cache_key"]: r["config"] for r in ws.store.list_runs() if r["method"] != "original"}
    for kind in ("truncate", "flip"):
        for target in ("run.json", "arrays"):
            detected = identical = cases = 0
            for key, cfg in configs.items():
                for _ in range(1 if kind == "truncate" else max(1, flips // len(configs))):
                    d = cache / "runs" / key
                    path = d / "run.json" if target == "run.json" else next(d.glob("arrays-*.npz"))
                    path.write_bytes(damaged(path.read_bytes(), kind, rng))
                    cases += 1
                    with caught() as record:
                        # calib_size as the sweep had it: the baselines' key leaves it out (see the notes)
                        run, cached = compress_run(ws, RunConfig(**{**cfg, "calib_size": 64}), measure_speed=False)
                    detected += int(bool(record) and not cached)
                    identical += int(stable(run) == reference[key])
            quarantined = len(list((cache / "quarantine").glob("*")))
            row(f"{'truncated' if kind == 'truncate' else 'one bit flipped in'} {target}",
                f"{'cut to half its length' if kind == 'truncate' else 'a random bit at a random offset'}, "
                f"then the run asked for again", cases,
                f"{detected}/{cases} detected, reported once, set aside ({quarantined} entries in quarantine/ so far) "
                f"and recomputed; {identical}/{cases} recomputed runs equal the originals", cases - identical)


def damage_blobs(work: Path, ws, flips: int) -> None:
    rng = random.Random(1)
    cache = ws.store.root
    for kind in ("images", "stats", "checkpoints"):
        files = sorted(p for p in (cache / "blobs" / kind).iterdir() if not p.name.endswith(".sha256"))
        for damage in ("truncate", "flip"):
            detected = same = cases = 0
            for path in files:
                original = path.read_bytes()
                for _ in range(1 if damage == "truncate" else max(1, flips // len(files))):
                    blob = damaged(original, damage, rng)
                    path.write_bytes(blob)
                    cases += 1
                    with caught() as record:
                        ok = RunStore(cache).verify_blob(kind, path.name.split(".")[0], path.suffix[1:])
                    detected += int(not ok and bool(record))
                    kept = list((cache / "quarantine" / "blobs" / kind).glob(f"{path.name}-*/{path.name}"))
                    same += int(any(p.read_bytes() == blob for p in kept))  # kept as found
                    path.write_bytes(original)  # put the good file back for the next case
                    side = path.with_name(path.name + ".sha256")
                    side.write_text(f"{hashlib.sha256(original).hexdigest()}  {path.name}\n")
            row(f"{'truncated' if damage == 'truncate' else 'one bit flipped in'} {kind} blob",
                "cut to half" if damage == "truncate" else "a random bit at a random offset", cases,
                f"{detected}/{cases} detected by the sidecar checksum and moved to quarantine/ "
                f"({same}/{cases} kept byte-for-byte as found); "
                + ("trained again by `hscc prepare`" if kind == "checkpoints" else "rebuilt on next use"),
                cases - detected)


def user_checkpoint_flips(work: Path, ws, flips: int) -> None:
    from hscc_core.nn.models import CheckpointError, CorruptCheckpointError, checkpoint_fingerprint, load_checkpoint

    rng = random.Random(2)
    src = ws.store.blob_path("checkpoints", ws.baseline_key(), "pt")
    fingerprint = checkpoint_fingerprint(src)
    outcomes = {"refused: weights digest mismatch": 0, "refused: unreadable": 0,
                "loads, same fingerprint (flip outside weights and identity)": 0,
                "loads, new fingerprint (identity field changed: new cache keys)": 0}
    wrong = 0
    for i in range(flips * 2):
        path = work / f"user-{i}.pt"
        path.write_bytes(damaged(src.read_bytes(), "flip", rng))
        try:
            _, meta = load_checkpoint(path)
        except CorruptCheckpointError:
            outcomes["refused: weights digest mismatch"] += 1
        except CheckpointError:
            outcomes["refused: unreadable"] += 1
        else:
            key = "loads, same fingerprint (flip outside weights and identity)" if meta["fingerprint"] == fingerprint \
                else "loads, new fingerprint (identity field changed: new cache keys)"
            outcomes[key] += 1
            # A loaded file with the old fingerprint must compute exactly what the original does.
            if meta["fingerprint"] == fingerprint:
                import torch

                a, _ = load_checkpoint(src)
                b, _ = load_checkpoint(path)
                x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(i))
                with torch.no_grad():
                    wrong += int(not torch.equal(a(x), b(x)))
        path.unlink()
    row("one bit flipped in a user's --checkpoint (no sidecar)", "a random bit at a random offset, then loaded",
        flips * 2, "; ".join(f"{n}x {k}" for k, n in outcomes.items() if n)
        + f"; {wrong} loaded with the old fingerprint but computing differently", wrong)


# ---- read-only store, concurrency, retrain ------------------------------------------------------

SWEEP = ["--methods", "hscc svd", "--grid", "1 2", "--clusters", "2", "--energy", "0.9 0.97",
         "--calib-size", "64", "--no-speed", "--quiet"]


def read_only(work: Path, data_args: list[str]) -> None:
    cache = work / "ro"
    shutil.copytree(work / "cache", cache)
    store = RunStore(cache)
    runs = [r for r in store.list_runs() if r["method"] != "original"]
    victim = cache / "runs" / runs[0]["cache_key"] / "run.json"
    victim.write_bytes(victim.read_bytes()[:-30])
    before = {p: sha(p) for p in cache.rglob("*") if p.is_file()}
    set_read_only(cache, True)
    try:
        args = [*data_args, "--cache-dir", str(cache)]
        listed = hscc("runs", *args, "--json", read_only=True)
        n = len(json.loads(listed.stdout)["runs"]) if listed.returncode == 0 else -1
        ev = hscc("evaluate", *args, read_only=True)
        cfg = runs[1]["config"]
        flags = ["--method", cfg["method"], "--energy", str(cfg["energy"]), "--no-speed", "--calib-size", "64"]
        if cfg["method"] == "hscc":
            flags += ["--grid", str(cfg["grid"]), "--clusters", str(cfg["clusters"])]
        cached = hscc("compress", *args, *flags, read_only=True)
        new = hscc("compress", *args, "--method", "svd", "--energy", "0.5", "--no-speed", read_only=True)
    finally:
        set_read_only(cache, False)
    after = {p: sha(p) for p in cache.rglob("*") if p.is_file()}
    warning = [ln for ln in listed.stderr.splitlines() if ln.startswith("hscc: warning:")]
    good = (n == len(runs) - 1 and ev.returncode == 0 and cached.returncode == 0 and new.returncode == 2
            and new.stderr.startswith("hscc: error:") and "Traceback" not in new.stderr + listed.stderr)
    row("read-only cache (with one corrupt entry)", "`chmod -R a-w`, commands run without root's override", 4,
        f"`runs` listed {n} of {len(runs)} (the corrupt one reported: \"{warning[0][15:90] if warning else ''}...\" "
        f"and left in place); `evaluate` and a cached `compress` served; a new `compress` refused in one line "
        f"(exit {new.returncode}: \"{new.stderr.strip()[:80]}...\"); {sum(before[p] != after.get(p) for p in before)} "
        "files changed", int(not good) + sum(before[p] != after.get(p) for p in before))


RACE = r"""
import sys, time
from hscc_core.runs.store import RunStore
store, marker = RunStore(sys.argv[1]), sys.argv[2]
def compute():
    with open(marker, "a") as fh:
        fh.write("x")
    time.sleep(0.5)
    return {"method": "m", "config": {}, "data_fingerprint": "d"}, {"a": [1, 2, 3]}
run, cached = store.get_or_compute("cd" * 12, compute)
print(int(cached))
"""


def concurrency(work: Path, data_args: list[str], reference: dict[str, str]) -> None:
    marker = work / "race.marker"
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(work / "race"), str(marker)], env=ENV,
                              stdout=subprocess.PIPE, text=True) for _ in range(6)]
    cached = [int(p.communicate()[0]) for p in procs]
    computes = len(marker.read_text())
    row("6 processes asking for one missing run at once", "`get_or_compute` on the same key", 6,
        f"computed {computes} time(s); {sum(cached)} processes got it from the store", int(computes != 1))

    cache = work / "two-sweeps"
    shutil.copytree(work / "cache", cache, ignore=shutil.ignore_patterns("runs", "quarantine"))
    args = ["sweep", *data_args, "--cache-dir", str(cache), *SWEEP, "--json"]
    hscc("evaluate", *data_args, "--cache-dir", str(cache))
    procs = [subprocess.Popen([sys.executable, "-m", "hscc_core", *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [json.loads(p.communicate()[0]) for p in procs]
    total = sum(o["computed"] for o in outs)
    differ = sum(stable(r) != reference[r["cache_key"]] for o in outs for r in o["runs"])
    row("two `hscc sweep` on one cache at once", f"the same {len(reference)}-run sweep started twice together", 2,
        f"computed {' + '.join(str(o['computed']) for o in outs)} = {total} runs for {len(reference)} "
        f"configurations (each reports the rest as cached); {differ} runs differ from an undisturbed sweep's",
        int(total != len(reference)) + differ)

    rewrites = 200
    reader = r"""
import sys
from hscc_core.runs.store import RunStore
store, bad, n = RunStore(sys.argv[1]), 0, 0
while True:
    entry = store.get_entry("ef" * 12)
    run = None if entry is None else entry[0]
    if entry is not None:
        n += 1
        bad += int(int(entry[1]["v"][0]) != run["v"] or len(set(entry[1]["v"].tolist())) != 1)
    if run is not None and run["v"] == int(sys.argv[2]) - 1:
        break
print(n, bad)
"""
    store = RunStore(work / "readers")
    store.put_run("ef" * 12, {"method": "m", "config": {}, "data_fingerprint": "d", "v": 0}, {"v": [0]})
    readers = [subprocess.Popen([sys.executable, "-c", reader, str(work / "readers"), str(rewrites)], env=ENV,
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    with caught() as record:
        for v in range(1, rewrites):
            store.put_run("ef" * 12, {"method": "m", "config": {}, "data_fingerprint": "d", "v": v}, {"v": [v] * 5000})
    reads = [tuple(map(int, r.communicate()[0].split())) for r in readers]
    torn = sum(b for _, b in reads)
    row("readers while a writer rewrites an entry", f"{rewrites - 1} rewrites, 2 reader processes reading in a loop",
        sum(n for n, _ in reads), f"{sum(n for n, _ in reads)} reads (`RunStore.get_entry`), {torn} torn (run and "
        f"arrays from different writes, or partial arrays), {len(record)} warnings", torn)


def retrain(work: Path, data_args: list[str]) -> None:
    cache = work / "cache"
    args = [*data_args, "--cache-dir", str(cache)]
    before = json.loads(hscc("runs", *args, "--json").stdout)["runs"]
    (ckpt,) = (cache / "blobs" / "checkpoints").glob("*.pt")
    old = ckpt.read_bytes()
    moved = work / "old-checkpoint"
    moved.mkdir(exist_ok=True)
    for p in (ckpt, ckpt.with_name(ckpt.name + ".sha256")):
        p.rename(moved / p.name)
    prep = json.loads(hscc("prepare", *args, "--json").stdout)
    after = json.loads(hscc("runs", *args, "--json").stdout)["runs"]
    row("retrain the baseline (bit-identical weights)", "checkpoint removed, `hscc prepare` trains it again", 1,
        f"new file ({'different' if ckpt.read_bytes() != old else 'same'} bytes: its training time differs), same "
        f"fingerprint; `hscc runs` lists {len(after)} of {len(before)} runs before",
        int({r['cache_key'] for r in after} != {r['cache_key'] for r in before}) + int(not prep["trained"]))


# ---- hostile strings and files --------------------------------------------------------------------

class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {EVIL_MARKER}",))


EVIL_MARKER = Path(tempfile.gettempdir()) / "hscc-faults-pwned"


def hostile(work: Path, data_args: list[str]) -> None:
    import torch

    from conftest import make_imagefolder
    from hscc_core.runs.settings import DataAccessError, data_settings, resolve_data_folder

    # A class folder named like a Markdown link, and an image whose header claims 12000 x 12000.
    name = "[clickme](https:evil.example) **bold**"
    folder = make_imagefolder(work / "hostile-data", n_train=6, n_test=2, classes=("glioma", name), size=32)
    (folder / "Training" / "glioma" / "huge.png").write_bytes(png_claiming(12000, 12000))
    prep = hscc("prepare", "--data", str(folder), "--cache-dir", str(work / "hostile-cache"), "--json",
                "--arch", "tiny", "--input-size", "32", "--epochs", "1", "--quiet")
    out = json.loads(prep.stdout)
    ok = prep.returncode == 0 and name in out["classes"] and out["skipped_files"] == ["Training/glioma/huge.png"]
    row("hostile training folder", "a class folder named `[clickme](https:evil.example) **bold**` and a PNG "
        "claiming 12000 x 12000 px", 2, f"the class name kept verbatim in the JSON (`present.text.plain` "
        f"renders it as text: `tests/test_text.py`, in Chromium); the PNG refused from its header, counted as unreadable "
        f"({len(out['skipped_files'])} skipped)", int(not ok))

    EVIL_MARKER.unlink(missing_ok=True)
    torch.save({"state_dict": {}, "meta": _Evil()}, work / "evil.pt")
    ev = hscc("evaluate", *data_args, "--cache-dir", str(work / "cache"), "--checkpoint", str(work / "evil.pt"))
    ran = EVIL_MARKER.exists()
    row("checkpoint holding code", "`torch.save` of an object whose unpickling calls `os.system`", 1,
        f"refused in one line (exit {ev.returncode}: \"{ev.stderr.strip()[:110]}...\"), no advice to load it "
        f"unsafely ({'weights_only=False' in ev.stderr}), code ran: {ran}",
        int(ran or ev.returncode != 2 or "weights_only" in ev.stderr))

    store = RunStore(work / "objects")
    key = "12" * 12
    store.put_run(key, {"method": "m", "config": {}, "data_fingerprint": "d"}, {"a": np.zeros(3)})
    (arrays,) = (work / "objects" / "runs" / key).glob("arrays-*.npz")
    buf = io.BytesIO()
    np.savez(buf, a=np.array([{"x": 1}], dtype=object))
    data = buf.getvalue()
    arrays.write_bytes(data)
    run_json = arrays.parent / "run.json"
    text = run_json.read_text()
    old_sha = text.split('"arrays":"')[1][:64]
    run_json.write_text(text.replace(old_sha, hashlib.sha256(data).hexdigest()))
    with caught() as record:
        got = store.get_arrays(key)
    row("object array in a checksum-valid .npz", "a run's arrays replaced by a pickled object array, checksums "
        "forged to match", 1, f"`np.load(allow_pickle=False)` refused it; entry reported ({len(record)} warning) and "
        f"set aside; nothing unpickled", int(got is not None))

    (blob,) = (work / "cache" / "blobs" / "images").glob("*.npz")
    with np.load(blob) as z:
        original = {k: z[k] for k in z.files}
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros(3))
    blob.write_bytes(buf.getvalue())
    blob.with_name(blob.name + ".sha256").write_text(f"{hashlib.sha256(buf.getvalue()).hexdigest()}  {blob.name}\n")
    ev = hscc("evaluate", *data_args, "--cache-dir", str(work / "cache"))
    warning = [ln for ln in ev.stderr.splitlines() if ln.startswith("hscc: warning:")]
    with np.load(blob) as z:
        same = set(z.files) == set(original) and all(np.array_equal(z[k], original[k]) for k in original)
    row(".npz without its arrays, checksum valid", "the decoded-images blob replaced by an .npz holding only `x`, "
        "sidecar forged", 1, f"\"{warning[0][15:120] if warning else ''}...\"; rebuilt "
        f"({'the same' if same else 'DIFFERENT'} arrays), exit {ev.returncode}", int(ev.returncode != 0 or not same))

    (work / "afile").write_text("x")
    bad = [hscc("runs", *data_args, "--cache-dir", str(work / "afile")),
           hscc("compress", *data_args, "--cache-dir", str(work / "cache"), "--grid", "1000", "--no-speed")]
    row("bad cache folder and grid", "`--cache-dir` pointing at a file; `--grid 1000`", 2,
        "; ".join(f"exit {p.returncode}: \"{p.stderr.strip()}\"" for p in bad),
        sum(p.returncode != 2 or "Traceback" in p.stderr or len(p.stderr.strip().splitlines()) != 1 for p in bad))

    served = work / "served"
    (served / "mri").mkdir(parents=True, exist_ok=True)
    if not (served / "escape").exists():
        (served / "escape").symlink_to("/etc", target_is_directory=True)
    settings = data_settings({"HSCC_DATA_ROOTS": str(served), "HSCC_ALLOW_DATA_INPUT": "1"})
    tries = ["/etc", f"{served}/../../../etc", str(served / "escape"), "~", str(served / "mri")]
    allowed = []
    for t in tries:
        try:
            resolve_data_folder(t, settings)
            allowed.append(t)
        except DataAccessError:
            pass
    row("data folder typed in the app", "`/etc`, `..` out of the root, a symbolic link to /etc, `~`, a folder "
        "inside the root", len(tries), f"{len(tries) - len(allowed)} refused with the same message, "
        f"{len(allowed)} opened (the one inside the root)", int(allowed != [str(served / 'mri')]))


# ---- the report ------------------------------------------------------------------------------------

def machine() -> str:
    from hscc_core.cli.compress import machine_description

    return machine_description()


def write_report(out: Path, command: str, seconds: float) -> None:
    lost = sum(r["lost"] for r in ROWS)
    lines = [
        "# Reliability: faults injected and what the tool did",
        "",
        "Every row below is a fault injected for real by `benchmarks/faults.py` on the embedded phantom with the",
        "tiny CNN (`--arch tiny --input-size 64`); \"lost\" counts stored results that were lost, torn or",
        "changed, or a refusal that did not come as one `hscc: error:` line.",
        "",
        f"Command: `{command}` ({seconds:.0f} s)  ",
        f"Machine: {machine()}",
        "",
        "| fault | injected how | cases | what the tool did | lost |",
        "| --- | --- | ---: | --- | ---: |",
    ]
    for r in ROWS:
        lines.append(f"| {r['fault']} | {r['how']} | {r['cases']} | {r['did'].replace('|', '/')} | {r['lost']} |")
    lines += ["", f"Total lost: {lost}.", "", "Notes:", "",
              "- How the store survives these is described in `hscc_core/runs/store.py` (atomic writes, checksums,",
              "  quarantine, claims). SIGKILL keeps the operating system's page cache, so the kill rows test process",
              "  crashes; power loss relies on the fsync-before-rename order and is not injected here.",
              "- Each damage case is checked as a new process would check it: file digests are memoised per file",
              "  state (device, inode, size, mtime) inside one process, so damage that leaves all four unchanged",
              "  while a process runs (bit rot under a long-lived app) is caught when the next process starts.",
              "- Found while building this table: a Global SVD or Tucker-2 run's `layer_errors` depend on",
              "  `calib_size` (its held-out images are the training images outside the calibration draw), but",
              "  `RunConfig.canonical()` leaves `calib_size` out of the baselines' cache key, so `hscc compress",
              "  --method svd --calib-size 64` and `--calib-size 256` share one key whose `layer_errors` depend on",
              "  which ran first. The rows above recompute with the sweep's own `--calib-size 64`.", ""]
    out.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=None, help="working folder (kept; default: a temporary one)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md")
    p.add_argument("--flips", type=int, default=20, help="bit flips per file type")
    args = p.parse_args(argv)
    start = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="hscc-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    for leftover in work.iterdir():  # what an earlier invocation left, except the phantom and baseline
        if leftover.name == "cache":
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            set_read_only(leftover, False)
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
    data_args = list(TINY)
    cache = work / "cache"
    shutil.rmtree(cache / "runs", ignore_errors=True)
    shutil.rmtree(cache / "quarantine", ignore_errors=True)
    for argv_ in (["prepare"], ["sweep", *SWEEP]):
        proc = hscc(*argv_, *data_args, "--cache-dir", str(cache))
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 2
    ref_store = RunStore(cache)
    reference = {r["cache_key"]: stable(r) for r in ref_store.list_runs() if r["method"] != "original"}

    kill_steps(work)
    kill_sweep(work, data_args, reference)
    read_only(work, data_args)
    concurrency(work, data_args, reference)
    retrain(work, data_args)
    from hscc_core.nn.training import TrainConfig
    from hscc_core.runs.workspace import PHANTOM_RECIPE, Workspace

    ws = Workspace(data=None, cache_dir=cache, arch="tiny", input_size=64,
                   recipe=TrainConfig(**{**PHANTOM_RECIPE.to_dict(), "epochs": 3}))
    damage_runs(work, ws, reference, args.flips)
    damage_blobs(work, ws, args.flips)
    user_checkpoint_flips(work, ws, args.flips)
    hostile(work, data_args)
    command = "python benchmarks/faults.py" + (f" --flips {args.flips}" if args.flips != 20 else "") + \
        (f" --work {args.work}" if args.work else "")
    write_report(args.out, command, time.perf_counter() - start)
    print(f"wrote {args.out}: {len(ROWS)} faults, {sum(r['lost'] for r in ROWS)} lost", file=sys.stderr)
    return 1 if any(r["lost"] for r in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())
