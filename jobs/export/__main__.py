"""`python -m jobs.export`: see jobs.export.cli."""

from jobs.common.process_exit import run_command
from jobs.export.cli import main

run_command(main)  # exits with main's code, never an abort at interpreter exit
