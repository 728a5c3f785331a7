"""`python -m jobs.synthesize`: see jobs.synthesize.cli."""

import sys

from jobs.synthesize.cli import main

sys.exit(main())
