"""`python -m jobs.bench`: see jobs.bench.cli."""

from jobs.bench.cli import main
from jobs.common.process_exit import run_command

run_command(main)  # exits with main's code, never an abort at interpreter exit
