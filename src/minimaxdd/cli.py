"""Command line: `minimaxdd <command>` (also `python -m minimaxdd`).

The flags of `train`, `finetune`, `sample` and `evaluate` are generated from their config dataclasses
(`config_flags`): a flag per field, with the field's type, choices, help and default, so a default or a
list of choices is written once, where the stage defines it. A flag left out is not set, so a preset's
value (or the dataclass default) stands.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import signal
import sys
import textwrap
import types
import typing
from typing import Any, Callable

from safetensors import SafetensorError

from minimaxdd import distributed as dist
from minimaxdd.baselines.registry import BASELINES, SelectConfig
from minimaxdd.baselines.registry import run_selection as run_select
from minimaxdd.data.sources import DATASETS, dataset_names
from minimaxdd.diffusion.generation import SampleConfig, run_sampling
from minimaxdd.errors import UserError
from minimaxdd.evaluation.classifiers import CLASSIFIERS
from minimaxdd.evaluation.metrics import format_metrics, run_metrics
from minimaxdd.evaluation.reference_classifier import reference_features
from minimaxdd.evaluation.runner import EvaluateConfig, format_table, run_evaluation
from minimaxdd.evaluation.train_test import BEST_OF_CHECKS
from minimaxdd.files import input_paths, os_error_code, refuse_overlap, run_lock
from minimaxdd.pipeline.ablation import (
    SWEEP_PARAMS,
    ablation_markdown,
    run_ablation,
    run_sweep,
)
from minimaxdd.pipeline.bookkeeping import STAGES
from minimaxdd.pipeline.config import (
    NO_FINETUNING,
    build_config,
    load_distill_preset,
    parse_set,
)
from minimaxdd.pipeline.demo import demo
from minimaxdd.pipeline.distill import distill
from minimaxdd.pipeline.presets import describe, list_presets, load_preset
from minimaxdd.pipeline.report import write_report
from minimaxdd.precision import machine_report
from minimaxdd.runtime import flush_denormals, keep_freed_memory
from minimaxdd.settings import build, default_of, field_types, type_name
from minimaxdd.training.finetune import FinetuneConfig
from minimaxdd.training.finetune import finetune as run_finetune
from minimaxdd.training.minimax import OBJECTIVES
from minimaxdd.training.scratch import TrainConfig
from minimaxdd.training.scratch import train_from_scratch as run_train

# `distill --data SPEC` without a preset: the generic small-data recipe (U-Net, EDM; pipeline/presets)
DEFAULT_DISTILL_PRESET = "small-data"

# ---------------------------------------------------------------------------------------------
# flags from config dataclasses


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def _scalar(tp: Any) -> Any:
    """The non-null type of `X | None`."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else None
    return tp


def _is_bool_or_choice(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and set(typing.get_args(tp)) == {bool, str}


def _tri_state_flag(p: argparse.ArgumentParser, name: str, choices: tuple[str, ...], help_: str) -> None:
    """--NAME (true), --NAME VALUE (true, false or one of `choices`) and --no-NAME (false)."""
    words = {"true": True, "false": False, **{c: c for c in choices}}

    def parse(text: str) -> bool | str:
        if text.lower() not in words:
            raise argparse.ArgumentTypeError(f"expected {', '.join(words)}, got {text!r}")
        return words[text.lower()]

    flag = "--" + name.replace("_", "-")
    p.add_argument(flag, dest=name, nargs="?", const=True, default=None, type=parse, metavar="|".join(words),
                   help=help_)
    p.add_argument("--no-" + name.replace("_", "-"), dest=name, action="store_false", help=f"{flag} false")


def config_flags(p: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                 required: tuple[str, ...] = (), positional: tuple[str, ...] = ()) -> None:
    """One flag per field of dataclass `cls` (default None: "not given"), typed, with choices and help."""
    hints = field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = _scalar(hints[f.name])
        kw: dict[str, Any] = {"default": None}
        help_ = f.metadata.get("help", "")
        try:
            default = default_of(cls, f.name)
            if default is not None and default is not False:
                help_ = f"{help_} (default {default})".strip()
        except TypeError:
            pass
        if _is_bool_or_choice(hints[f.name]):       # true, false or a named choice (flip: auto)
            _tri_state_flag(p, f.name, tuple(f.metadata.get("choices") or ()), help_)
            continue
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif tp in (int, float, str):
            kw["type"] = tp
            if f.metadata.get("choices"):
                kw["choices"] = list(f.metadata["choices"])
        elif typing.get_origin(tp) is list and typing.get_args(tp) == (int,):
            kw["type"], kw["metavar"] = _int_list, "I,J,..."
        else:
            continue                      # dicts and nested configs: not flags
        if f.name in positional:
            p.add_argument(f.name, nargs="?" if f.name not in required else None, type=kw.get("type"), help=help_)
            continue
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, required=f.name in required,
                       help=help_ or type_name(hints[f.name]), **kw)


def given(a: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of `cls` set on the command line."""
    return {f.name: getattr(a, f.name) for f in dataclasses.fields(cls) if getattr(a, f.name, None) is not None}


def _add_place(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, default=None,
                   help="image side for decoded folders (and resize of tensor sources)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--seed", type=int, default=0)


# ---------------------------------------------------------------------------------------------
# parser


def _datasets_help() -> str:
    return f"dataset spec NAME[:ARG]; sources: {', '.join(dataset_names())}"


def _parse_select(sub: Any) -> None:
    p = sub.add_parser("select", help="K images per class: random, herding, k-center, or DM-optimised")
    p.add_argument("--method", required=True, choices=sorted(BASELINES))
    p.add_argument("--real", required=True, help=_datasets_help())
    p.add_argument("--ipc", type=int, required=True, help="images per class")
    p.add_argument("--out", required=True, help="output directory (synthetic-set format)")
    config_flags(p, SelectConfig, skip=("method", "real", "ipc", "out"))


def _parse_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="train classifiers on a synthetic set, test on the real test set")
    config_flags(p, EvaluateConfig, required=("real",), positional=("synth",))
    # the flag's name before issue 28; --model names the denoiser in `train` and `finetune`
    p.add_argument("--model", dest="model_deprecated", default=None, choices=list(CLASSIFIERS),
                   help="deprecated: use --classifier")


def _add_time_limit(p: argparse.ArgumentParser) -> None:
    # the config holds seconds (LoopConfig.time_limit); people think of a run's budget in minutes
    p.add_argument("--time-limit", type=float, default=None, metavar="MIN",
                   help="stop (with a checkpoint) after this many minutes")


def _minutes_to_seconds(a: argparse.Namespace, kw: dict[str, Any]) -> None:
    if a.time_limit is not None:
        kw["time_limit"] = a.time_limit * 60


def _parse_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a class-conditional diffusion model from scratch")
    p.add_argument("--preset", default=None, help="a named train preset (see `minimaxdd presets`); flags override it")
    _add_time_limit(p)
    config_flags(p, TrainConfig, skip=("preset", "extra", "time_limit"))


def _parse_sample(sub: Any) -> None:
    p = sub.add_parser("sample", help="IPC images per class from a checkpoint (synthetic-set format)")
    config_flags(p, SampleConfig, skip=("classes",), required=("ckpt", "out"), positional=("ckpt",))


def _parse_finetune(sub: Any) -> None:
    p = sub.add_parser("finetune", help="Difffit fine-tuning with the Minimax criteria (or a Table-5 ablation row)")
    _add_time_limit(p)
    config_flags(p, FinetuneConfig, skip=("classes", "time_limit"), required=("ckpt", "data", "out"))


def _parse_distill(sub: Any) -> None:
    p = sub.add_parser("distill", help="the main job: base model -> minimax fine-tuning -> sampling -> "
                                       "evaluation against baselines -> report")
    p.add_argument("--preset", default=None, help="a distill preset (see `minimaxdd presets`) or a preset .json path "
                                                  f"(default {DEFAULT_DISTILL_PRESET})")
    p.add_argument("--data", default=None, help=f"overrides the preset's; {_datasets_help()}")
    p.add_argument("--ipc", default=None, help="images per class, comma separated (e.g. 10,50)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config entry, e.g. --set finetune.steps=200 --set evaluate.repeats=1 "
                        "(values are read as JSON when they parse; --print-config lists the keys)")
    p.add_argument("--out", default=None, help="run directory (default runs/<preset>)")
    p.add_argument("--from-stage", default=None, choices=STAGES, help="rerun this stage and all after it")
    p.add_argument("--print-config", action="store_true", help="print the resolved, typed config and exit")
    p.add_argument("--size", type=int, default=None, help="image side (default: the dataset's)")
    p.add_argument("--device", default=None, help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--seed", type=int, default=None, help="overrides the preset's seed")


PRESET_HELP = ("a distill preset (name or .json path) whose data, finetune, sample and evaluate settings the study "
               "takes (its base training, guidance choice and baselines are not used: give the guidance a distill "
               "run chose with --set sample.cfg=...)")


def _seed_list(text: str) -> list[int]:
    """argparse type for --seeds: `_int_list`, non-empty and non-negative."""
    try:
        values = _int_list(text)
    except argparse.ArgumentTypeError:
        values = []
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers such as 0,1,2, got {text!r}")
    return values


def _parse_studies(sub: Any) -> None:
    p = sub.add_parser("ablation", help="Table 5: fine-tune, sample and evaluate each objective from one base model")
    p.add_argument("--base", required=True, help="base checkpoint: a run, ckpt-*.safetensors, or official weights")
    p.add_argument("--preset", default=None, help=PRESET_HELP)
    p.add_argument("--data", default=None, help=_datasets_help() + " (default: the preset's)")
    p.add_argument("--ipc", default="10,50", help="images per class, comma separated")
    p.add_argument("--objectives", default=",".join((NO_FINETUNING, *OBJECTIVES)),
                   help="comma separated; none = the base model unchanged (the paper's DiT column)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seeds", default=None, type=_seed_list, metavar="S,S,...",
                   help="sampling seeds, e.g. 0,1,2: each variant is fine-tuned once and sampled and evaluated "
                        "at each seed (random real at the same selection seeds); tables give mean +- std over "
                        "seeds (default: the config's seed alone, std over classifier repeats)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override the distill config, e.g. --set finetune.steps=500 --set evaluate.epochs=300")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto")

    p = sub.add_parser("sweep", help="Fig. 6: accuracy against one fine-tuning knob (lambda_r, lambda_d, memory, ...)")
    p.add_argument("--base", required=True)
    p.add_argument("--preset", default=None, help=PRESET_HELP)
    p.add_argument("--data", default=None, help="dataset spec (default: the preset's)")
    p.add_argument("--param", required=True, help=", ".join(SWEEP_PARAMS))
    p.add_argument("--values", required=True, help="comma separated values")
    p.add_argument("--objective", default=default_of(FinetuneConfig, "objective"), choices=list(OBJECTIVES))
    p.add_argument("--ipc", default="10")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seeds", default=None, type=_seed_list, metavar="S,S,...",
                   help="sampling seeds, e.g. 0,1,2: each variant is fine-tuned once and sampled and evaluated "
                        "at each seed (random real at the same selection seeds); tables give mean +- std over "
                        "seeds (default: the config's seed alone, std over classifier repeats)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; the stage commands' flags come from their config dataclasses."""
    ap = argparse.ArgumentParser(prog="minimaxdd",
                                 description="Dataset distillation with diffusion models, and its evaluation.")
    sub = ap.add_subparsers(dest="command", required=True)
    _parse_select(sub)
    _parse_evaluate(sub)
    p = sub.add_parser("demo", help="the embedded default: `distill --preset digits` (about 5 minutes on 2 CPU cores)")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--repeats", type=int, default=None, help="classifier repeats (default: the preset's)")
    p.add_argument("--device", default="auto")
    sub.add_parser("datasets", help="list dataset sources")
    _parse_train(sub)
    _parse_sample(sub)
    _parse_finetune(sub)
    _parse_distill(sub)
    p = sub.add_parser("metrics", help="MMD, FID, precision / recall, density / coverage, representativeness and "
                                       "spread of synthetic sets against the real training set")
    p.add_argument("synth", nargs="+", help="one or more synthetic sets (dir, ImageFolder, .pt, .npz)")
    p.add_argument("--real", required=True, help=_datasets_help())
    p.add_argument("--out", default=None, help="write the metrics as JSON here")
    p.add_argument("--features", default="reference",
                   help="reference (the harness's full-data ConvNet-3, default) or torchscript:PATH (e.g. Inception)")
    p.add_argument("--tsne", default=None, help="also write a t-SNE plot (PNG) here")
    _add_place(p)
    _parse_studies(sub)
    p = sub.add_parser("report", help="(re)write RUN/report.md from a distill run")
    p.add_argument("run", help="a distill run directory")
    sub.add_parser("presets", help="list the named presets")
    p = sub.add_parser("machine", help="this machine's CPU, its measured bf16 speed and the precision `auto` picks")
    p.add_argument("--remeasure", action="store_true", help="measure again instead of reading the cache")
    return ap


# ---------------------------------------------------------------------------------------------
# commands


def cmd_select(a: argparse.Namespace) -> int:
    s = run_select(build(SelectConfig, given(a, SelectConfig), allow_run=True))
    print(f"wrote {len(s.labels)} images ({a.ipc} per class, {a.method}) to {a.out}")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    if a.model_deprecated is not None:
        if a.classifier is not None and a.classifier != a.model_deprecated:
            raise UserError(f"--model {a.model_deprecated} (deprecated) and --classifier {a.classifier} disagree; "
                            "give --classifier only")
        print("warning: evaluate --model is deprecated (in train and finetune it names the denoiser); "
              "use --classifier", file=sys.stderr, flush=True)
        a.classifier = a.model_deprecated
    r = run_evaluation(build(EvaluateConfig, given(a, EvaluateConfig), allow_run=True))
    if not dist.is_main():
        return 0
    print(format_table([r]))
    if BEST_OF_CHECKS in r:   # evaluate --report-best: beside the result, never in its place
        b = r[BEST_OF_CHECKS]
        print(f"{BEST_OF_CHECKS}: {100 * b['mean']:.2f} +- {100 * b['std']:.2f} (epochs "
              f"{', '.join(map(str, b['epochs_checked']))}); the result is the final-epoch accuracy above")
    if "generation" in r:
        g = r["generation"]
        print(f"generation accuracy {100 * g['generation_accuracy']:.2f}% (reference classifier: "
              f"{100 * g['reference_test_accuracy']:.2f}% on the real test set)")
    per_class = zip(r["class_names"], r["per_class"])
    print("per-class accuracy (%): " + ", ".join(f"{n} {100 * v:.1f}" for n, v in per_class))
    if a.out:
        print(f"wrote {a.out}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    demo(out=a.out, repeats=a.repeats, device=a.device)
    return 0


def cmd_datasets(a: argparse.Namespace) -> int:
    for name, fn in DATASETS.items():
        doc = (fn.__doc__ or "").strip().splitlines()
        print(f"{name:<16}{doc[0] if doc else ''}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    kw = dict(load_preset(a.preset, "train")) if a.preset else {}
    kw.update(given(a, TrainConfig))
    _minutes_to_seconds(a, kw)
    if a.epochs is not None or a.steps is not None:   # a flag for one length replaces the preset's other
        kw["epochs"], kw["steps"] = a.epochs, a.steps
    for need in ("data", "out"):
        if not kw.get(need):
            raise UserError(f"train needs --{need} (or a --preset that sets it)")
    info = run_train(build(TrainConfig, {**kw, "preset": a.preset}, "train", allow_run=True))
    if dist.is_main():
        print(f"trained {info['steps']} steps ({info['images_per_s']} images/s); checkpoint {info['checkpoint']}"
              + (f" (stopped early: {info['stopped']})" if info["stopped"] else ""))
    return 0


def cmd_sample(a: argparse.Namespace) -> int:
    kw = given(a, SampleConfig)
    if a.ipc is None and a.budget_minutes is None:
        raise UserError("sample needs --ipc K, or --budget-minutes M (optionally with --ipc as a cap)")
    if a.ipc is None:
        kw["ipc"] = 10**6                # no cap: the budget decides
    path, info = run_sampling(build(SampleConfig, kw, allow_run=True), reference_features)
    if not dist.is_main():
        return 0
    b = info.get("budget")
    extra = f"; budget {b['minutes']} min: {b['per_class']} per class, stopped by {b['stopped']}" if b else ""
    print(f"wrote {path}: {info['num_images']} images ({info['images_per_s']} images/s sampling{extra})")
    return 0


def cmd_finetune(a: argparse.Namespace) -> int:
    kw = given(a, FinetuneConfig)
    _minutes_to_seconds(a, kw)
    if a.epochs is not None or a.steps is not None:
        kw["epochs"], kw["steps"] = a.epochs, a.steps
    info = run_finetune(build(FinetuneConfig, kw, allow_run=True))
    if dist.is_main():
        print(f"fine-tuned {info['steps']} steps ({info['images_per_s']} images/s); checkpoint {info['checkpoint']}")
    return 0


def cmd_presets(a: argparse.Namespace) -> int:
    for name in list_presets():
        stage, text = describe(name)
        print(f"{name}  [{stage}]")
        print(textwrap.indent(textwrap.fill(text, 96), "    "))
    return 0


def cmd_distill(a: argparse.Namespace) -> int:
    name = a.preset or DEFAULT_DISTILL_PRESET
    if not a.preset:
        print(f"[distill] no --preset: the {name} preset (`minimaxdd presets` describes it)", file=sys.stderr)
    preset = load_distill_preset(name)
    over = parse_set(a.set)
    for k in ("data", "ipc", "size", "device", "seed"):
        if getattr(a, k) is not None:
            over[k] = getattr(a, k)
    cfg = build_config(preset, over)
    if a.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    out = a.out or f"runs/{name.removesuffix('.json').split('/')[-1]}"
    rows = distill(cfg, out, a.from_stage)
    print(format_table(rows))
    print(f"wrote {out}/results.json and {out}/report.md")
    return 0


def cmd_metrics(a: argparse.Namespace) -> int:
    m = run_metrics(a.synth, a.real, a.out, a.features, a.size, a.device, a.seed, a.tsne)
    print(format_metrics(m))
    if a.out:
        print(f"wrote {a.out}")
    return 0


def cmd_ablation(a: argparse.Namespace) -> int:
    refuse_overlap(a.out, input_paths(a.base, a.data))
    with run_lock(a.out):        # the variants' stages inside OUT take no locks of their own
        res = run_ablation(a.base, a.data, a.ipc, [o.strip() for o in a.objectives.split(",") if o.strip()], a.out,
                           a.repeats, parse_set(a.set), a.device, a.preset, a.seeds)
    print(ablation_markdown(res))
    print(f"wrote {a.out}/ablation.md and {a.out}/ablation.json")
    return 0


def cmd_sweep(a: argparse.Namespace) -> int:
    refuse_overlap(a.out, input_paths(a.base, a.data))
    with run_lock(a.out):
        res = run_sweep(a.base, a.data, a.ipc, a.param, a.values.split(","), a.out, a.objective, a.repeats,
                        parse_set(a.set), a.device, a.preset, a.seeds)
    for p in res["points"]:
        print(f"{a.param}={p['value']}: " + ", ".join(f"IPC {r['ipc']} {100 * r['mean']:.2f} +- {100 * r['std']:.2f}"
                                                      for r in p["rows"]))
    print(f"wrote {res['plot']} and {a.out}/sweep-{a.param}.md")
    return 0


def cmd_machine(a: argparse.Namespace) -> int:
    print(machine_report(a.remeasure))
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    print(f"wrote {write_report(a.run)}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "select": cmd_select, "evaluate": cmd_evaluate, "demo": cmd_demo, "datasets": cmd_datasets,
    "train": cmd_train, "sample": cmd_sample, "finetune": cmd_finetune, "presets": cmd_presets,
    "distill": cmd_distill, "report": cmd_report, "metrics": cmd_metrics, "ablation": cmd_ablation,
    "sweep": cmd_sweep, "machine": cmd_machine}


def _quiet_broken_pipe() -> int:
    """The reader of our output went away (`minimaxdd presets | head -1`): point stdout at /dev/null so that
    the flush at exit cannot fail again, and exit as a process killed by SIGPIPE would (Python's recipe)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 128 + signal.SIGPIPE


# The OS errors a user can fix, as the message says them (any other OSError is a bug: its traceback shows).
OS_ERRORS = {errno.ENOSPC: "the disk is full (no space left on device); free some space or choose another --out",
             errno.EDQUOT: "the disk quota is exceeded; free some space or choose another --out",
             errno.EROFS: "the file system is read-only; choose another --out",
             errno.EACCES: "permission denied; choose a path you may write or fix its permissions",
             errno.EPERM: "operation not permitted; choose a path you may write or fix its permissions",
             errno.ENOENT: "no such file or directory; check the path",
             errno.ENOTDIR: "a part of the path is not a directory; check the path",
             errno.EISDIR: "is a directory where a file was expected; check the path",
             errno.ENAMETOOLONG: "the file name is too long; choose a shorter path",
             errno.EIO: "an I/O error (a failing disk or network file system); check the device and retry"}


def _user_message(e: BaseException) -> str | None:
    """The message for an error a user can fix that escaped the commands' own checks, or None for a bug."""
    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, OSError) and e.errno in OS_ERRORS:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{OS_ERRORS[e.errno]}"
    if isinstance(e, SafetensorError):       # a checkpoint written or read outside the paths that name the file
        if os_error_code(e) in OS_ERRORS:
            return f"writing a .safetensors file: {OS_ERRORS[os_error_code(e)]}"
        if "deserializ" in str(e):
            return f"a .safetensors file is truncated or corrupt ({e}); re-download it or re-run what wrote it"
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill PID`, a batch system's time limit), raised where the program is, as Ctrl-C's
    KeyboardInterrupt is: the same clean-ups run (locks released, temporary files removed)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def _on_sigterm() -> Callable[[], None]:
    """Make SIGTERM raise Terminated; returns what puts the handler before back (on the main thread only: Python
    sets handlers nowhere else)."""
    try:
        before = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL if before is None else before)


def main(argv: list[str] | None = None) -> int:
    """Parse, run one command. A UserError, or an OS error a user can fix (a full disk, permissions), prints its
    message without a traceback and exits with 2; Ctrl-C exits with 130 and SIGTERM with 143, both after the
    clean-ups; a closed output pipe exits quietly with 141. Any other exception is a bug and shows its traceback
    (see minimaxdd.errors)."""
    args = build_parser().parse_args(argv)
    flush_denormals()
    keep_freed_memory()
    ok = False
    restore_sigterm = _on_sigterm()
    try:
        rc = COMMANDS[args.command](args)
        sys.stdout.flush()                # a closed pipe fails here, inside the try, not at exit
        ok = True
        return rc
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except Terminated:
        print(f"minimaxdd {args.command}: terminated (SIGTERM); nothing half-written was kept", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"minimaxdd {args.command}: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    except (UserError, OSError, SafetensorError) as e:
        msg = _user_message(e)
        if msg is None:
            raise
        print(f"minimaxdd {args.command}: error: {msg}", file=sys.stderr)
        return 2
    finally:
        restore_sigterm()
        dist.shutdown(sync=ok)
