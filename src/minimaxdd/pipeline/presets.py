"""Named presets: JSON files in `minimaxdd/pipeline/presets/` (beside this module), each
`{"stage": ..., "description": ..., "config": {...}}`.

A preset fills a stage's config; flags given on the command line override it.
"""
from __future__ import annotations

import json
from pathlib import Path

from minimaxdd.errors import UserError

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def load_preset_file(name: str) -> dict:
    """A preset by name, or by path to a JSON file of the same form."""
    path = Path(name) if name.endswith(".json") else PRESETS_DIR / f"{name}.json"
    if not path.exists():
        raise UserError(f"unknown preset {name!r}; known: {', '.join(list_presets()) or 'none'} "
                        "(or give the path of a preset .json file)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"preset {path} is not valid JSON: {e}") from e


def describe(name: str) -> tuple[str, str]:
    d = load_preset_file(name)
    return d.get("stage", "?"), d.get("description", "")


def load_preset(name: str, stage: str) -> dict:
    d = load_preset_file(name)
    if d.get("stage") != stage:
        raise UserError(f"preset {name!r} is for `{d.get('stage')}`, not `{stage}`")
    return d["config"]
