"""`python -m jobs.status`: see jobs.status.cli."""

from jobs.common.process_exit import run_command
from jobs.status.cli import main

run_command(main)  # exits with main's code, never an abort at interpreter exit
