"""``--split {official,clean}`` on the command line: every data-reading command takes it, the clean
split is audited and prepared on its own, a bad value is one line and exit 2."""

import json

import pytest

from conftest import PLANTED, make_planted_folder
from hscc_core.cli.main import build_parser, main

TINY = ["--arch", "tiny", "--input-size", "96", "--epochs", "1", "--quiet"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_planted_folder(tmp_path_factory.mktemp("planted") / "mri")


def test_every_command_that_reads_data_takes_split():
    parser, _ = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse keeps them here
    with_data = {name for name, sub in commands.items() if "--data" in sub._option_string_actions}  # noqa: SLF001
    assert {"audit", "prepare", "evaluate", "compress", "sweep"} <= with_data
    assert all("--split" in commands[name]._option_string_actions for name in with_data)  # noqa: SLF001


def test_audit_of_both_splits(capsys, folder, tmp_path):
    args = ["audit", "--data", str(folder), "--cache-dir", str(tmp_path / "c"), "--json", *TINY]
    code, out, _ = run_cli(capsys, *args)
    official = json.loads(out)
    assert code == 0 and official["split"] == "official"
    assert official["summary"]["test_images_with_twin_in_train"] == len(PLANTED)
    below = {frozenset((p["a"]["path"], p["b"]["path"])) for p in official["duplicate_groups"]["pairs_below_threshold"]}
    assert frozenset(("Training/pituitary_tumor/Tr0.png", "Testing/pituitary_tumor/cropped.png")) in below
    code, out, _ = run_cli(capsys, *args, "--split", "clean")
    clean = json.loads(out)
    assert code == 0 and clean["split"].startswith("clean seed=0")
    s = clean["summary"]
    assert s["test_images_with_twin_in_train"] == 0 and s["test_files_also_in_train"] == 0
    assert s["duplicate_groups_across_splits"] == 0 and s["duplicate_groups"] == len(PLANTED)
    assert all(abs(clean["counts"]["test"][c] - n) <= 1 for c, n in official["counts"]["test"].items())
    code, out, _ = run_cli(capsys, *[a for a in args if a != "--json"], "--split", "clean")
    assert code == 0 and "split: clean seed=0" in out and "test images sharing a group with a training image: 0" in out


def test_prepare_stores_each_split_separately(capsys, folder, tmp_path):
    cache = str(tmp_path / "c")
    runs = {}
    for split in ("official", "clean", "clean"):
        code, out, _ = run_cli(capsys, "prepare", "--data", str(folder), "--cache-dir", cache, "--split", split,
                               "--json", *TINY)
        assert code == 0
        runs.setdefault(split, []).append(json.loads(out))
    official, (clean, clean_again) = runs["official"][0], runs["clean"]
    assert official["data_fingerprint"] != clean["data_fingerprint"]
    assert clean["trained"] and official["trained"] and not clean_again["trained"]
    assert clean["data"].endswith("(clean split)")


@pytest.mark.parametrize("value", ["leaky", "Clean", ""])
def test_bad_split_is_one_line_exit_2(capsys, folder, tmp_path, value):
    code, out, err = run_cli(capsys, "audit", "--data", str(folder), "--cache-dir", str(tmp_path), "--split", value)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("hscc: error:") and "invalid choice" in err and "'clean'" in err
