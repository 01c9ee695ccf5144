"""Typed settings: the helpers that let one dataclass per stage be the only place a default is written.

A stage's config is a dataclass. Its fields are of two kinds:
  - settings (model, lr, steps, ...): what a preset or `--set KEY=VALUE` may say;
  - run fields (`run_field`): where and on what the stage runs (data, out, seed, device, resume, ...),
    given by the command line or by `distill` itself, never by a preset's stage section.

`coerce` checks (and, for text from the command line, parses) one value against a field's type, and
its errors name the key, the type expected and, where the field lists them, the allowed values.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Union

from minimaxdd.errors import UserError


@dataclass(frozen=True)
class Bounds:
    """The numbers a setting may take, by its meaning: lo <= v (lo < v when `lo_open`), v <= hi (v < hi when
    `hi_open`). None (a null setting) is always allowed; in a list, each item is checked."""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def holds(self, v: float) -> bool:
        above = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        below = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return above and below

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'greater than' if self.lo_open else 'at least'} {self.lo:g}"
        if self.lo is None:
            return f"{'less than' if self.hi_open else 'at most'} {self.hi:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


POSITIVE = Bounds(0, lo_open=True)          # lengths, rates, scales: 0 means nothing would happen
AT_LEAST_1 = Bounds(1)                      # counts and intervals of steps, images, epochs
NON_NEGATIVE = Bounds(0)                    # weights of a term, counts where 0 means none
PROBABILITY = Bounds(0, 1)                  # probabilities and fractions


def run_field(default: Any = dataclasses.MISSING, *, help: str = "", bounds: Bounds | None = None) -> Any:
    """A field that says where or on what a stage runs, not how: the CLI or `distill` fills it."""
    return dataclasses.field(default=default, metadata={"run": True, "help": help, "bounds": bounds})


def setting(default: Any, *, help: str = "", choices: tuple[str, ...] | None = None,
            bounds: Bounds | None = None) -> Any:
    """A setting with its help text (and, for a closed set of names, the allowed values; for a number, the
    `Bounds` its meaning allows, which `build` enforces)."""
    meta = {"help": help, "choices": choices, "bounds": bounds}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: copy.deepcopy(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def is_run_field(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("run"))


def setting_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a stage config that a preset or `--set` may give (run fields excluded)."""
    return [f for f in dataclasses.fields(cls) if not is_run_field(f)]


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass (annotations are strings under `from __future__ import annotations`)."""
    return typing.get_type_hints(cls)


def type_name(tp: Any) -> str:
    """`int | None`, `list[int]`, `float`: a type as a user reads it."""
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple, dict):
        args = ", ".join(type_name(a) for a in typing.get_args(tp) if a is not Ellipsis)
        return f"{origin.__name__}[{args}]" if args else origin.__name__
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def _fail(key: str, value: Any, tp: Any, choices: tuple[str, ...] | None = None) -> UserError:
    allowed = f"; allowed: {', '.join(map(str, choices))}" if choices else ""
    return UserError(f"{key}: expected {type_name(tp)}{allowed}, got {value!r}")


def coerce(key: str, value: Any, tp: Any, choices: tuple[str, ...] | None = None) -> Any:
    """`value` checked against type `tp` (JSON-like values; ints are accepted where floats are expected).

    Raises UserError naming `key`, the expected type and the allowed values."""
    if isinstance(value, float) and not math.isfinite(value):   # nan or inf never means a rate, a scale, a length
        raise UserError(f"{key}: expected a finite number, got {value!r}; give a finite value")
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise _fail(key, value, tp, choices)
        for opt in options:
            if opt is type(None):
                continue
            try:
                return coerce(key, value, opt, choices)
            except UserError:
                continue
        raise _fail(key, value, tp, choices)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _fail(key, value, tp)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _fail(key, value, tp)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _fail(key, value, tp)
    if tp is str:
        if not isinstance(value, str):
            raise _fail(key, value, tp, choices)
        if choices and value not in choices:
            raise _fail(key, value, tp, choices)
        return value
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise _fail(key, value, tp, choices)
        return [coerce(f"{key}[{i}]", v, item, choices) for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _fail(key, value, tp, choices)
        item = args[0] if args else Any
        return tuple(coerce(f"{key}[{i}]", v, item, choices) for i, v in enumerate(value))
    if origin is dict:
        kt, vt = typing.get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            raise _fail(key, value, tp)
        return {coerce(f"{key} key", k, kt): coerce(f"{key}.{k}", v, vt) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise _fail(key, value, tp)
        return build(tp, value, key)
    raise _fail(key, value, tp)


def parse_text(raw: str) -> Any:
    """A command-line value: JSON when it parses (10, 1e-3, null, true, [10, 50]), a list of bare words when it is
    bracketed ([herding, kcenter] for ["herding", "kcenter"]; each item parsed as a value itself), else the text."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    text = raw.strip()
    if text.startswith("[") and text.endswith("]") and not any(c in text[1:-1] for c in "[]{}\"'"):
        return [parse_text(item.strip()) for item in text[1:-1].split(",")] if text[1:-1].strip() else []
    return raw


def build(cls: type, values: dict[str, Any], where: str = "", allow_run: bool = False) -> Any:
    """An instance of dataclass `cls` from a (nested) dict, every value type-checked.

    Unknown keys are refused with the list of known ones; so are run fields unless `allow_run`."""
    prefix = f"{where}." if where else ""
    hints = field_types(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if allow_run or not is_run_field(f)}
    bad = sorted(set(values) - set(known))
    if bad:
        hint = "" if allow_run else " (data, out, seed and device are given on the command line)"
        raise UserError(f"unknown setting(s) {', '.join(prefix + b for b in bad)}; "
                        f"known under {where or 'the top level'}: {', '.join(sorted(known))}{hint}")
    kw = {name: coerce(prefix + name, v, hints[name], known[name].metadata.get("choices"))
          for name, v in values.items()}
    for name, v in kw.items():
        check_bounds(prefix + name, v, known[name], flag=allow_run)
    return cls(**kw)


def check_bounds(key: str, value: Any, f: dataclasses.Field, flag: bool = False) -> None:
    """Raise UserError if number `value` (or a number in list, tuple or dict `value`) of field `f` is outside
    the field's `Bounds`; the message names the key (and, with `flag`, its command-line flag), what the
    setting means and the allowed range."""
    bounds = f.metadata.get("bounds")
    if bounds is None:
        return
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not bounds.holds(v):
            what = _first_clause(f.metadata.get("help", ""))
            name = f"{key} (--{f.name.replace('_', '-')})" if flag else key
            raise UserError(f"{name} must be {bounds}, got {v!r}" + (f": {what}" if what else "")
                            + f"; give it a value {bounds}")


def _first_clause(help: str) -> str:
    """A setting's help up to its first "; " outside parentheses: what the setting is ("" when that is
    only what null means)."""
    depth = 0
    for i, c in enumerate(help):
        depth += {"(": 1, ")": -1}.get(c, 0)
        if c == ";" and depth == 0:
            help = help[:i]
            break
    return "" if help.startswith("null") else help


def to_dict(obj: Any) -> Any:
    """A config as plain JSON data (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def without_values(settings: dict, values: dict) -> dict:
    """`settings` less each entry that equals its value in `values`: what a stage key sees of settings added
    after runs existed (at the value those runs used they stay out, so the runs' keys hold)."""
    return {k: v for k, v in settings.items() if k not in values or v != values[k]}


def default_of(cls: type, name: str) -> Any:
    """The default of field `name` of dataclass `cls` (so another config can share it without restating it)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"{cls.__name__}.{name} has no default")


def settings_class(cls: type, name: str | None = None, choices: dict[str, tuple[str, ...]] | None = None,
                   exclude: tuple[str, ...] = ()) -> type:
    """A dataclass of the settings of stage config `cls` (its run fields dropped), with the same types,
    defaults and help: what a section of the distill config holds. `choices` widens a field's allowed values;
    `exclude` drops settings that the composing config gives itself."""
    hints = field_types(cls)
    specs = []
    for f in setting_fields(cls):
        if f.name in exclude:
            continue
        meta = dict(f.metadata)
        if choices and f.name in choices:
            meta["choices"] = choices[f.name]
        if f.default is not dataclasses.MISSING:
            fld = dataclasses.field(default=f.default, metadata=meta)
        elif f.default_factory is not dataclasses.MISSING:
            fld = dataclasses.field(default_factory=f.default_factory, metadata=meta)
        else:
            raise TypeError(f"setting {cls.__name__}.{f.name} needs a default")
        specs.append((f.name, hints[f.name], fld))
    return dataclasses.make_dataclass(name or f"{cls.__name__}Settings", specs, kw_only=True)
