"""`python -m jobs.bench`: see jobs.bench.cli."""

import sys

from jobs.bench.cli import main

sys.exit(main())
