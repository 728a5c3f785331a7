"""`python -m jobs.evaluate`: see jobs.evaluate.cli."""

from jobs.common.process_exit import run_command
from jobs.evaluate.cli import main

run_command(main)  # exits with main's code, never an abort at interpreter exit
