"""``python -m hscc_core.compress.native build``: compile the kernel (``make setup`` runs it).

Prints the status as JSON; exits 0 also when the build fails (the PyTorch path then runs), unless
``--strict`` is given.
"""

import argparse
import json
import sys

from hscc_core.compress import native

parser = argparse.ArgumentParser(prog="python -m hscc_core.compress.native")
parser.add_argument("command", choices=["build", "status"])
parser.add_argument("--strict", action="store_true", help="exit 1 when the kernel is not usable")
parser.add_argument("--verbose", action="store_true", help="show the compiler's output")
args = parser.parse_args()
ok = native.build(verbose=args.verbose) if args.command == "build" else native.available()
print(json.dumps(native.status()))
sys.exit(1 if args.strict and not ok else 0)
