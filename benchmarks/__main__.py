"""``python -m benchmarks [--suite quick|full] -o DIR`` from the repository root: the whole suite.

See ``_suite.py`` (the runner and its table of benchmarks) and ``README.md``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _suite import main

sys.exit(main())
