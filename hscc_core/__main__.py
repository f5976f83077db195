"""``python -m hscc_core``: the ``hscc`` command line where the console script is not installed."""

import sys

from hscc_core.cli.main import main

sys.exit(main())
