"""`python -m jobs.report`: see jobs.report.cli."""

import sys

from jobs.report.cli import main

sys.exit(main())
