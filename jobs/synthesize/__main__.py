"""`python -m jobs.synthesize`: see jobs.synthesize.cli."""

from jobs.common.process_exit import run_command
from jobs.synthesize.cli import main

run_command(main)  # exits with main's code, never an abort at interpreter exit
