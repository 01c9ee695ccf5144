"""README.md: every `minimaxdd ...` command parses with today's command line (flags and choices exist), every
import of its Python blocks exists, and its first screen holds the set-up, own-data, API, verdict and results."""
from __future__ import annotations

import ast
import importlib
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


def readme_python_blocks() -> list[str]:
    """The ```python blocks of README.md."""
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def readme_imports(root: bool) -> list[tuple[str, str]]:
    """(module, name) of each `from minimaxdd... import name` in README's Python blocks; `root`: the package
    root's names only, else the submodules'."""
    out = []
    for block in readme_python_blocks():
        for node in ast.walk(ast.parse(block)):        # a block that does not parse fails here
            if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == "minimaxdd":
                if (node.module == "minimaxdd") == root:
                    out += [(node.module, a.name) for a in node.names]
    return out


def test_readme_python_imports_from_submodules_exist():
    names = readme_imports(root=False)
    assert ("minimaxdd.diffusion.generation", "SampleConfig") in names
    missing = [f"{m}.{n}" for m, n in names if not hasattr(importlib.import_module(m), n)]
    assert not missing, missing


def test_readme_python_imports_from_the_package_root_exist():
    import minimaxdd

    names = [n for _, n in readme_imports(root=True)]
    assert {"distill", "evaluate_set", "minimax_loss", "sample_checkpoint"} <= set(names)
    assert [n for n in names if not hasattr(minimaxdd, n)] == []


def test_the_first_screen_says_what_how_on_your_data_and_where_it_stands():
    text = README.read_text()
    top = "\n".join(text.splitlines()[:100])
    for needle in ("make demo", "make test", "minimaxdd distill --data ", "from minimaxdd import ",
                   "## Where it stands", "<!-- current-results"):
        assert needle in top, f"{needle!r} is not in README's first 100 lines"
    verdict = text.split("## Where it stands", 1)[1].split("\n#", 1)[0]
    assert len(re.findall(r"^- \*\*", verdict, flags=re.M)) == 4      # four lines of verdict, no wall
    assert text.count("<!-- current-results") == 1                   # one results table
