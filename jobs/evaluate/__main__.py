"""`python -m jobs.evaluate`: see jobs.evaluate.cli."""

import sys

from jobs.evaluate.cli import main

sys.exit(main())
