"""The ``hscc`` command line: everything the app does, scriptable with ``--json``.

Contract (DESIGN.md section 5): every command takes ``--data`` (default: the embedded phantom),
``--cache-dir`` (default ``cache/``) and ``--json`` (one JSON object on stdout; progress and logs on
stderr). Bad input gives one line on stderr and exit code 2, never a traceback. Each command group
lives in its own module and registers itself here; :mod:`hscc_core.cli.common` holds what they share.
"""

from __future__ import annotations

import sys

from hscc_core.cli import bench, compress, data, export, heatmap, predict, search
from hscc_core.cli.common import EXIT_BAD_INPUT, Parser, UsageError
from hscc_core.cli.messages import warning_lines
from hscc_core.data.folders import DataError
from hscc_core.nn.models import CheckpointError

__all__ = ["build_parser", "main"]

_GROUPS = (data, compress, bench, predict, heatmap, search, export)


def build_parser() -> tuple[Parser, dict]:
    """The parser of every command, and command name -> handler."""
    parser = Parser(prog="hscc", description="HSCC compression explorer for MRI tumour classifiers")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    handlers = {}
    for group in _GROUPS:
        handlers.update(group.register(sub))
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hscc`` console script."""
    parser, handlers = build_parser()
    try:
        with warning_lines():  # warnings (a corrupt cache entry set aside) as `hscc: warning:` lines
            args = parser.parse_args(argv)
            return handlers[args.command](args)
    except UsageError as exc:
        print(f"hscc: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (DataError, CheckpointError, ValueError, FileNotFoundError) as exc:  # StoreError is a ValueError
        print(f"hscc: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # what the environment refused (permissions, a full disk): still one line
        print(f"hscc: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("hscc: interrupted (finished runs are kept in the cache)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
