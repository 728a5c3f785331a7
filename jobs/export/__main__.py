"""`python -m jobs.export`: see jobs.export.cli."""

import sys

from jobs.export.cli import main

sys.exit(main())
