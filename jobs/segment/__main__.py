"""`python -m jobs.segment`: see jobs.segment.cli."""

from jobs.common.process_exit import run_command
from jobs.segment.cli import main

run_command(main)  # exits with main's code, never an abort at interpreter exit
