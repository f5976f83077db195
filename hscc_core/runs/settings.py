"""Operator settings: which data folders a shared app may open, and whether viewers may train.

Anyone who can reach the app acts on the server with the server's rights, so what they may reach is
decided on the server, by environment variables, never by the page:

``HSCC_DATA``
    The dataset the app opens first (empty: the embedded phantom). Always allowed.
``HSCC_DATA_ROOTS``
    More allowed folders, separated by ``os.pathsep`` (``:`` on Linux). Each root, and each of its
    direct sub-folders, is offered in the data-folder choice; a typed path must lie inside one.
``HSCC_ALLOW_DATA_INPUT``
    ``1`` turns on the free-text data-folder box (default off). Typed paths are still confined to
    the allowed roots: ``/etc``, ``..`` and symbolic links that leave a root are refused with the
    same message whether or not the target exists, so the box reveals nothing outside the roots.
``HSCC_ALLOW_PREPARE``
    ``1`` lets viewers train a missing baseline from the app (default off: training takes the
    server's CPUs for up to an hour; prepare baselines with ``hscc prepare`` instead).

Booleans accept ``1/true/yes/on`` and ``0/false/no/off`` (any case); anything else is an operator
error and raises ``ValueError`` naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DataAccessError", "DataSettings", "data_choices", "data_settings", "resolve_data_folder"]

ENV_DATA = "HSCC_DATA"
ENV_ROOTS = "HSCC_DATA_ROOTS"
ENV_ALLOW_INPUT = "HSCC_ALLOW_DATA_INPUT"
ENV_ALLOW_PREPARE = "HSCC_ALLOW_PREPARE"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")
MAX_CHOICES = 200  # sub-folders offered per root; a huge root is a misconfiguration, not a menu


class DataAccessError(ValueError):
    """A data folder outside what the operator allows (the message reveals nothing about it)."""


@dataclass(frozen=True)
class DataSettings:
    """What the operator allows, read from the environment by :func:`data_settings`.

    Attributes
    ----------
    default : Path or None
        ``HSCC_DATA``, resolved (None: the embedded phantom). Allowed, with what lies inside it.
    roots : tuple of Path
        ``HSCC_DATA_ROOTS``, resolved (symbolic links followed). Allowed, with what lies inside.
    allow_input : bool
        Show the free-text data-folder box.
    allow_prepare : bool
        Let viewers train a missing baseline from the app.
    """

    default: Path | None = None
    roots: tuple[Path, ...] = ()
    allow_input: bool = False
    allow_prepare: bool = False


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={env[name]!r} is not a switch: use 1 or 0 (also true/false, yes/no, on/off)")


def data_settings(env: Mapping[str, str] | None = None) -> DataSettings:
    """The operator's settings from ``env`` (default ``os.environ``).

    Raises
    ------
    ValueError
        A switch that is neither on nor off.
    """
    env = os.environ if env is None else env
    default_text = env.get(ENV_DATA, "").strip()
    default = _resolve(Path(default_text).expanduser()) if default_text else None
    roots: list[Path] = []
    for text in env.get(ENV_ROOTS, "").split(os.pathsep):
        if text.strip():
            root = _resolve(Path(text.strip()).expanduser())
            if root not in roots:
                roots.append(root)
    return DataSettings(default=default, roots=tuple(roots), allow_input=_flag(env, ENV_ALLOW_INPUT),
                        allow_prepare=_flag(env, ENV_ALLOW_PREPARE))


def _resolve(path: Path) -> Path:
    # Absolute, with "..", "." and every symbolic link resolved, whether or not the path exists.
    return Path(os.path.realpath(os.path.abspath(path)))


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_data_folder(text: str | os.PathLike[str] | None, settings: DataSettings) -> Path | None:
    """The folder a viewer asked for, if the operator allows it.

    Parameters
    ----------
    text : str, path or None
        What was chosen or typed; empty or None means the embedded phantom (always allowed).
    settings : DataSettings

    Returns
    -------
    Path or None
        The resolved folder (use this path, not the text: it is the one that was checked), or
        None for the phantom.

    Raises
    ------
    DataAccessError
        The folder is not inside an allowed root (after resolving ``..`` and symbolic links).
        The message is the same whether or not the folder exists.
    """
    if text is None or not str(text).strip():
        return None
    path = _resolve(Path(str(text).strip()).expanduser())
    allowed_roots = ([settings.default] if settings.default is not None else []) + list(settings.roots)
    if any(_inside(path, root) for root in allowed_roots):
        return path
    allowed = ", ".join(str(r) for r in allowed_roots) or "none besides the embedded phantom"
    raise DataAccessError(f"this server does not open that data folder (allowed folders: {allowed}; "
                          f"the operator sets them with {ENV_DATA} and {ENV_ROOTS})")


def data_choices(settings: DataSettings) -> list[str]:
    """The data folders to offer in a select box: ``""`` (the phantom), ``HSCC_DATA``, then each
    ``HSCC_DATA_ROOTS`` root and its direct, non-hidden sub-folders (at most :data:`MAX_CHOICES`
    per root), without repeats. Every entry passes :func:`resolve_data_folder`."""
    out = [""] + ([str(settings.default)] if settings.default is not None else [])
    for root in settings.roots:
        entries = [root]
        try:
            subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            subs = []
        entries += [p for p in subs if _inside(_resolve(p), root)][:MAX_CHOICES]  # no links leaving it
        out += [str(p) for p in entries if str(p) not in out]
    return out
