"""Every `minimaxdd ...` command in README.md parses with today's command line (flags and choices exist)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from minimaxdd.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[list[str]]:
    """argv of each command in README's code blocks (`minimaxdd X`, `python -m minimaxdd X`, torchrun)."""
    lines, inside = [], False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    text = "\n".join(lines).replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.search(r"(?:^|\s)(?:python -m )?(?:-m )?minimaxdd (\S.*)$", line)
        if m and not line.startswith(("from ", "import ")):
            out.append(shlex.split(m.group(1)))
    return out


def test_readme_has_the_commands():
    cmds = {argv[0] for argv in readme_commands()}
    assert {"select", "evaluate", "train", "sample", "finetune", "distill", "metrics", "ablation", "sweep",
            "report", "presets"} <= cmds


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_readme_command_parses(argv):
    args = build_parser().parse_args(argv)
    assert args.command == argv[0]
