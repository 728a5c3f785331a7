"""python -m jobs.export: see jobs.export.cli."""
