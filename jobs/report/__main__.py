"""`python -m jobs.report`: see jobs.report.cli."""

from jobs.common.process_exit import run_command
from jobs.report.cli import main

run_command(main)  # exits with main's code, never an abort at interpreter exit
