"""Operator settings for a shared app: data folders come from the server's environment, typed paths
stay inside the allowed roots (``/etc``, ``..`` and escaping symbolic links refused with one message
that reveals nothing), and the data box and baseline training are off unless switched on."""

from __future__ import annotations

import os

import pytest

from hscc_core.runs.settings import DataAccessError, data_choices, data_settings, resolve_data_folder


@pytest.fixture
def roots(tmp_path):
    """``served/`` with two datasets, a hidden folder, a link escaping it; ``private/`` beside it."""
    served, private = tmp_path / "served", tmp_path / "private"
    for p in (served / "mri-a", served / "mri-b", served / ".hidden", private / "secret"):
        p.mkdir(parents=True)
    (served / "escape").symlink_to(private, target_is_directory=True)
    (served / "mri-a" / "inner-link").symlink_to(private / "secret", target_is_directory=True)
    return served, private


def test_defaults_are_closed():
    s = data_settings({})
    assert (s.default, s.roots, s.allow_input, s.allow_prepare) == (None, (), False, False)
    assert data_choices(s) == [""]
    assert resolve_data_folder("", s) is None and resolve_data_folder(None, s) is None  # the phantom
    with pytest.raises(DataAccessError):
        resolve_data_folder("/etc", s)


def test_switches_and_their_errors():
    on = data_settings({"HSCC_ALLOW_DATA_INPUT": "1", "HSCC_ALLOW_PREPARE": "Yes"})
    assert on.allow_input and on.allow_prepare
    assert not data_settings({"HSCC_ALLOW_DATA_INPUT": "off", "HSCC_ALLOW_PREPARE": "0"}).allow_prepare
    with pytest.raises(ValueError, match="HSCC_ALLOW_PREPARE='maybe' is not a switch"):
        data_settings({"HSCC_ALLOW_PREPARE": "maybe"})


def test_only_folders_inside_the_roots_open(roots, tmp_path):
    served, private = roots
    s = data_settings({"HSCC_DATA": str(served / "mri-a"), "HSCC_DATA_ROOTS": f"{served}{os.pathsep}"})
    assert data_choices(s) == ["", str(served / "mri-a"), str(served), str(served / "mri-b")]
    for choice in data_choices(s):
        resolve_data_folder(choice, s)  # every offered folder opens
    assert resolve_data_folder(str(served / "mri-b"), s) == served / "mri-b"
    assert resolve_data_folder(f"{served}/mri-b/../mri-a", s) == served / "mri-a"  # ".." inside is fine
    refused = ["/etc", "/", str(private), str(private / "secret"), f"{served}/../private",
               f"{served}/mri-a/../../private/secret", str(served / "escape"), str(served / "escape" / "secret"),
               str(served / "mri-a" / "inner-link"), str(tmp_path / "does-not-exist"), "../../../etc", "~"]
    messages = set()
    for text in refused:
        with pytest.raises(DataAccessError) as info:
            resolve_data_folder(text, s)
        messages.add(str(info.value))
    assert len(messages) == 1  # the same answer whether the folder exists, is a link or is missing
    (message,) = messages
    assert "private" not in message and "etc" not in message and "HSCC_DATA_ROOTS" in message


def test_hscc_data_alone_allows_itself_not_its_siblings(roots):
    served, _ = roots
    s = data_settings({"HSCC_DATA": str(served / "mri-a")})
    assert data_choices(s) == ["", str(served / "mri-a")]
    assert resolve_data_folder(str(served / "mri-a"), s) == served / "mri-a"
    with pytest.raises(DataAccessError):
        resolve_data_folder(str(served / "mri-b"), s)
