"""The commands docs/deploy.md and docs/export.md quote are accepted by the real parsers."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from jobs.export.cli import build_parser as export_parser
from jobs.status.cli import build_parser as status_parser

DOCS = Path(__file__).resolve().parents[2] / "docs"
PARSERS = {"jobs.export": export_parser, "jobs.status": status_parser}


def quoted(name: str) -> list[tuple[str, list[str]]]:
    """(module, args) of every `python -m jobs.export|status ...` line in the file's code blocks."""
    blocks = "\n".join(re.findall(r"```[a-z]*\n(.*?)```", (DOCS / name).read_text(), flags=re.S))
    found = []
    for line in blocks.splitlines():
        match = re.search(r"python -m (jobs\.(?:export|status)) (.*?)(\s+#.*)?$", line)
        if match:
            found.append((match.group(1), shlex.split(match.group(2))))
    return found


@pytest.mark.parametrize("name", ["deploy.md", "export.md"])
def test_quoted_commands_parse(name):
    commands = quoted(name)
    assert commands, f"{name} quotes no jobs.export/jobs.status command"
    for module, args in commands:
        PARSERS[module]().parse_args(args)
