"""python -m jobs.status: see jobs.status.cli."""
