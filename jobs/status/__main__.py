"""`python -m jobs.status`: see jobs.status.cli."""

import sys

from jobs.status.cli import main

sys.exit(main())
