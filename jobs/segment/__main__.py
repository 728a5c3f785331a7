"""`python -m jobs.segment`: see jobs.segment.cli."""

import sys

from jobs.segment.cli import main

sys.exit(main())
