"""The distill config: one typed tree composed of the stage configs, built once from defaults <- preset <- overrides.

    DistillConfig
      data, size, seed, device, ipc, phases
      base       BaseConfig: pretrained weights, or `train` (the settings of training.scratch.TrainConfig)
      finetune   the settings of training.finetune.FinetuneConfig (objective "none": no fine-tuning)
      sample     the settings of diffusion.generation.SampleConfig
      choose     ChoiceConfig: guidance scales / step counts to choose among on a validation split
      extras     ExtrasConfig: the optional rows beside ours (generate many and keep few; start from real medoids)
      evaluate   EvaluationConfig: classifiers, protocol, repeats, baselines (with DM's settings), ...

Each stage section is derived from its stage's dataclass (`settings_class`), so each default is written
once, where the stage defines it. Presets and `--set KEY=VALUE` go through `build`, which checks every
key and value; an error names the key, the type expected and the allowed values.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from minimaxdd.baselines.distribution_matching import DMConfig
from minimaxdd.baselines.registry import BASELINES
from minimaxdd.diffusion.generation import GUIDANCE_SCALES, SampleConfig, guides_on, modes_name
from minimaxdd.errors import UserError
from minimaxdd.evaluation.classifiers import CLASSIFIERS as MODELS
from minimaxdd.evaluation.protocols import PROTOCOLS
from minimaxdd.evaluation.runner import EvaluateConfig
from minimaxdd.pipeline.presets import load_preset_file
from minimaxdd.precision import resolve_precision
from minimaxdd.runtime import PRECISIONS
from minimaxdd.settings import (
    AT_LEAST_1,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    Bounds,
    build,
    default_of,
    parse_text,
    setting,
    settings_class,
    to_dict,
)
from minimaxdd.training.finetune import FinetuneConfig
from minimaxdd.training.minimax import OBJECTIVES
from minimaxdd.training.scratch import TrainConfig

NO_FINETUNING = "none"     # the objective that skips fine-tuning: the base model as is (the paper's "DiT" column)

TrainSettings = settings_class(TrainConfig, "TrainSettings")
# fine-tuning reads the codec of the base (`base.codec` for pretrained weights; ours carry theirs)
FinetuneSettings = settings_class(FinetuneConfig, "FinetuneSettings", exclude=("codec",),
                                  choices={"objective": (NO_FINETUNING, *OBJECTIVES)})
SampleSettings = settings_class(SampleConfig, "SampleSettings")
DMSettings = settings_class(DMConfig, "DMSettings")


@dataclass(kw_only=True)
class BaseConfig:
    pretrained: str | None = setting(None, help="pretrained weights: one of our checkpoints, the official DiT .pt, "
                                                "or a diffusers DiT folder; null: train from scratch")
    codec: str | None = setting(None, help="the codec of pretrained weights, e.g. vae:DIR")
    weights_help: str | None = setting(None, help="where to get the pretrained weights, shown if they are missing")
    train: TrainSettings = field(default_factory=TrainSettings)


@dataclass(kw_only=True)
class EvaluationConfig:
    models: list[str] = setting(["convnet3"], help="classifiers trained on each set", choices=tuple(MODELS))
    protocol: str = setting(default_of(EvaluateConfig, "protocol"), choices=tuple(PROTOCOLS))
    repeats: int = setting(default_of(EvaluateConfig, "repeats"), bounds=AT_LEAST_1,
                         help="classifiers per set, each its own seed")
    epochs: int | dict[str, int] | None = setting(None, bounds=AT_LEAST_1,
                                                 help="null: the protocol's; an int; or by IPC, "
                                                      "e.g. {\"10\": 300, \"50\": 100}")
    precision: str = setting(default_of(EvaluateConfig, "precision"), choices=PRECISIONS)
    baselines: list[str] = setting(["random", "herding", "kcenter"], choices=tuple(BASELINES),
                                   help="real-image baselines at each IPC")
    full_epochs: int | None = setting(50, bounds=NON_NEGATIVE,
                                     help="epochs of the full-data row; null or 0: no full-data row")
    generation_accuracy: bool = setting(True, help="score our sets with the full-data reference classifier")
    dm: DMSettings = field(default_factory=DMSettings)
    metrics: bool = setting(True, help="diagnostics (MMD, FD, precision / recall, ...) at the largest IPC")
    compile: bool = setting(default_of(EvaluateConfig, "compile"),
                            help="train the classifiers through torch.compile (not part of a row's key)")
    image_size: int | None = setting(default_of(EvaluateConfig, "image_size"), bounds=AT_LEAST_1,
                                     help="side the classifiers train and test at; null: the data's (256 for the "
                                          "ImageNet subsets, the paper's tables); 224: the authors' code")
    soft_labels: bool = setting(False, help="also evaluate every set under the protocol's soft-label variant "
                                            "(<protocol>-soft: a teacher trained on the full data labels each "
                                            "augmented batch), reported in tables of its own")
    soft_protocol: str | None = setting(None, choices=tuple(p for p in PROTOCOLS if PROTOCOLS[p].soft),
                                        help="the soft-label protocol of soft_labels; null: <protocol>-soft. "
                                             "rded: RDED's recipe, with DD-Ranking's LRS / ARS in the report")
    teacher_epochs: int | None = setting(default_of(EvaluateConfig, "teacher_epochs"), bounds=AT_LEAST_1,
                                         help="epochs of the soft-label teacher; null: its recipe's (~100k images "
                                              "seen for *-soft, 200 for rded)")
    teacher_file: str | None = setting(default_of(EvaluateConfig, "teacher_file"),
                                       help="a torchvision-layout ResNet-18 state dict as the teacher (ImageNet "
                                            "subsets)")
    report_best: bool = setting(default_of(EvaluateConfig, "report_best"),
                                help="also record the best of test checks every check_every epochs beside each "
                                     "final-epoch row, as published tables report; not a result: never read by "
                                     "choose, never in the accuracy tables (report.md lists it apart)")
    check_every: int | None = setting(default_of(EvaluateConfig, "check_every"), bounds=AT_LEAST_1,
                                      help="report_best: epochs between test checks (the last is always checked); "
                                           "null: a tenth of the epochs")


@dataclass(kw_only=True)
class ChoiceConfig:
    cfg: list[float] = setting([], bounds=GUIDANCE_SCALES,
                              help="guidance scales to choose among on a validation split of the training "
                                   "set (the `choose` stage); empty: sample.cfg as it is")
    steps: list[int] = setting([], bounds=AT_LEAST_1,
                              help="sampler step counts to choose among (every pair with cfg); empty: "
                                   "sample.steps as it is")
    val_fraction: float = setting(0.1, bounds=Bounds(0, 1, lo_open=True, hi_open=True),
                                 help="share of each class's training images held out to score candidates")
    ipc: int | None = setting(None, bounds=AT_LEAST_1,
                              help="images per class sampled per candidate (default: the smallest IPC)")
    epochs: int | None = setting(None, bounds=AT_LEAST_1,
                                 help="classifier epochs per candidate (default: evaluate's at that IPC)")
    repeats: int = setting(1, bounds=AT_LEAST_1, help="classifiers per candidate")
    per_ipc: bool = setting(False, help="score the candidates at every IPC of the run and sample each IPC with its "
                                        "own choice (smaller IPCs then stop being prefixes of larger ones when the "
                                        "choices differ); false: one choice, at choose.ipc")
    # The knobs of the sampling guides (diffusion.guides), chosen like the guidance scale: every combination with
    # cfg and steps is a candidate; empty: sample's value as it is. A guide any candidate turns on names the row.
    cfg_sigma_lo: list[float] = setting([], bounds=NON_NEGATIVE, help="guidance-interval lower ends to choose among")
    cfg_sigma_hi: list[float] = setting([], bounds=POSITIVE, help="guidance-interval upper ends to choose among")
    mode_guidance: list[float] = setting([], bounds=PROBABILITY, help="mode-guidance strengths to choose among")
    mode_stop: list[float] = setting([], bounds=NON_NEGATIVE, help="mode-guidance stop levels (sigma) to choose among")
    deviation: list[float] = setting([], bounds=NON_NEGATIVE, help="deviation-term strengths to choose among")
    deviation_sigma_lo: list[float] = setting([], bounds=NON_NEGATIVE, help="deviation-window lower ends")
    deviation_sigma_hi: list[float] = setting([], bounds=POSITIVE, help="deviation-window upper ends")


# The choose lists of the sampling guides' knobs (each a SampleConfig setting of the same name).
GUIDE_KNOBS = ("cfg_sigma_lo", "cfg_sigma_hi", "mode_guidance", "mode_stop", "deviation", "deviation_sigma_lo",
               "deviation_sigma_hi")


@dataclass(kw_only=True)
class ExtrasConfig:
    """Optional rows, each beside its control and reported in a table of its own, never as the method's row."""
    pool: int = setting(0, help="K: 'generate many, keep few': K x IPC samples per class from the fine-tuned model "
                                "(the first IPC of which are the method's set), IPC of them kept by herding in the "
                                "reference classifier's feature space (row <method>-poolK-herding) and, as its "
                                "control, IPC of the same pool at random (<method>-poolK-random); 0: no such rows")
    prototypes: float | None = setting(None, help="sigma: 'start from real prototypes' (D4M, SDEdit): IPC real class "
                                                  "medoids (k-means in the reference feature space) noised to this "
                                                  "sigma and denoised by the fine-tuned EDM model (row "
                                                  "medoids-sigmaS), beside the medoids themselves (row medoids); "
                                                  "null: no such rows")


@dataclass(kw_only=True)
class DistillConfig:
    data: str | None = setting(None, help="dataset spec NAME[:ARG]")
    size: int | None = setting(None, bounds=AT_LEAST_1, help="image side (default: the dataset's)")
    seed: int = setting(0)
    device: str = setting("auto", help="auto, cpu, cuda, cuda:1, ...")
    ipc: list[int] = setting([10], bounds=AT_LEAST_1,
                              help="images per class; smaller IPCs are per-class prefixes of the largest")
    # fine-tune one model per contiguous group of classes and sample each group from its own model
    # (the paper's ImageNet-100: 5 phases of 20 classes); 1 = one model for all classes
    phases: int = setting(1, bounds=AT_LEAST_1, help="fine-tuning phases (contiguous class groups), each its own model")
    base: BaseConfig = field(default_factory=BaseConfig)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    sample: SampleSettings = field(default_factory=SampleSettings)
    choose: ChoiceConfig = field(default_factory=ChoiceConfig)
    extras: ExtrasConfig = field(default_factory=ExtrasConfig)
    evaluate: EvaluationConfig = field(default_factory=EvaluationConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def merge(base: dict, over: dict) -> dict:
    """Deep-merge `over` into a copy of `base`."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_set(items: list[str]) -> dict:
    """`--set a.b=v` pairs as a nested dict; v is read as JSON when it parses (10, null, [10,50], true), a bracketed
    list of bare words as that list ([herding, kcenter]), else as text (`settings.parse_text`)."""
    out: dict = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--set takes KEY=VALUE (e.g. finetune.steps=200), got {item!r}")
        d = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise UserError(f"--set {item!r}: {p} is set both as a value and as a section")
        d[parts[-1]] = parse_text(raw)
    return out


def parse_ipcs(v: Any) -> list[int]:
    """IPCs from an int, a list or text like "10,50": sorted, distinct, positive."""
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if isinstance(v, str):
        try:
            v = [int(s) for s in v.split(",") if s.strip()]
        except ValueError as e:
            raise UserError(f"ipc takes comma-separated integers (e.g. 10,50), got {v!r}") from e
    if not isinstance(v, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise UserError(f"ipc: expected an integer or a list of integers (e.g. 10,50), got {v!r}")
    ipcs = sorted(set(v))
    if not ipcs or ipcs[0] < 1:
        raise UserError(f"ipc: images per class must be positive integers, got {v!r}")
    return ipcs


def load_distill_preset(name: str) -> dict:
    """A distill preset's config section (named preset or .json path); refuses presets of other stages."""
    d = load_preset_file(name)
    if d.get("stage") != "distill":
        raise UserError(f"preset {name!r} is for `{d.get('stage')}`, not `distill`; see `minimaxdd presets`")
    return d["config"]


def build_config(preset: dict | None, overrides: dict) -> DistillConfig:
    """The run's typed config: defaults <- preset <- overrides, every key and value checked once."""
    raw = merge(preset or {}, overrides)
    if "ipc" in raw:
        raw["ipc"] = parse_ipcs(raw["ipc"])
    cfg = build(DistillConfig, raw)
    check(cfg)
    return cfg


def check(cfg: DistillConfig) -> None:
    """Checks across keys (types and choices were checked by `build`)."""
    if not cfg.data:
        raise UserError("distill needs a dataset: --data SPEC (or a --preset that sets it)")
    if cfg.phases < 1:
        raise UserError(f"phases must be a positive integer (classes are split into that many fine-tuning "
                        f"groups), got {cfg.phases!r}")
    if cfg.choose.per_ipc and cfg.choose.ipc is not None:
        raise UserError("choose.per_ipc scores every IPC of the run, choose.ipc one given IPC: set one of them")
    if not 0 < cfg.choose.val_fraction < 1:
        raise UserError(f"choose.val_fraction must be between 0 and 1, got {cfg.choose.val_fraction}")
    e = cfg.evaluate
    if isinstance(e.epochs, dict):
        bad = [k for k in e.epochs if not k.isdigit()]
        if bad:
            raise UserError(f"evaluate.epochs: keys must be IPCs like \"10\", got {bad}")
    if e.repeats < 1:
        raise UserError(f"evaluate.repeats must be at least 1, got {e.repeats}")
    x = cfg.extras
    if x.pool < 0 or x.pool == 1:
        raise UserError(f"extras.pool must be 0 (no pool rows) or at least 2 (K x IPC samples per class), got {x.pool}")
    if x.prototypes is not None and not x.prototypes > 0:
        raise UserError(f"extras.prototypes is the noise level sigma the medoids are noised to, a positive number "
                        f"(e.g. 2.0), or null for no such rows; got {x.prototypes}")
    if (x.pool or x.prototypes is not None) and cfg.phases > 1:
        raise UserError("extras.pool / extras.prototypes need a one-model run; set phases=1 or drop them")


# where a distill config says a precision (base.train.precision, ...)
PRECISION_KEYS = (("base", "train"), ("finetune",), ("sample",), ("evaluate",), ("evaluate", "dm"))


def precisions(cfg: DistillConfig) -> dict[str, str]:
    """{"base.train": "auto", "finetune": "bf16", ...}: the precision each section says."""
    out = {}
    for path in PRECISION_KEYS:
        section: Any = cfg
        for name in path:
            section = getattr(section, name)
        out[".".join(path)] = section.precision
    return out


def resolve_precisions(cfg: DistillConfig, device: Any) -> DistillConfig:
    """`cfg` with every precision replaced by the one this machine runs ("auto" resolved; see
    minimaxdd.precision): the stage keys and stage.json files then hold the precision used, so a result
    computed in one precision is never reused by a run asked to compute in another."""
    def swap(section: Any, path: tuple[str, ...]) -> Any:
        if not path:
            return dataclasses.replace(section, precision=resolve_precision(section.precision, device))
        return dataclasses.replace(section, **{path[0]: swap(getattr(section, path[0]), path[1:])})
    for path in PRECISION_KEYS:
        cfg = swap(cfg, path)
    return cfg


def set_name(objective: str) -> str:
    """The name of our set in tables: the fine-tuning objective, or `diffusion` for the base model as is."""
    return "diffusion" if objective == NO_FINETUNING else objective


def guide_suffix(cfg: DistillConfig) -> str:
    """"+interval", "+modes" (or "+feature-modes", clustered in the reference features; "+medoid-modes" or
    "+feature-medoid-modes" when each mode is a real image), "+deviation" for each
    sampling guide the run's sample section, or any candidate of `choose`, turns on ("" for none): a set sampled
    with a guide is its own row, never the method's."""
    c, on = cfg.choose, guides_on(cfg.sample)
    on["interval"] |= any(v > 0 for v in c.cfg_sigma_lo) or bool(c.cfg_sigma_hi)
    on["modes"] |= any(v > 0 for v in c.mode_guidance)
    on["deviation"] |= any(v > 0 for v in c.deviation)
    names = {"modes": modes_name(cfg.sample.mode_space, cfg.sample.mode_target)}
    return "".join(f"+{names.get(name, name)}" for name, v in on.items() if v)


def method_name(cfg: DistillConfig) -> str:
    """`set_name` of the run's fine-tuning objective, with `+<variant>` for each setting of issue 29 away from its
    default, so that a variant is its own row and never folds into "minimax": `+centred` or `+feature`
    (finetune.embedding), `+native-terms` or `+weight-terms` (finetune.edm_transfer), then `guide_suffix` for
    the sampling guides."""
    f = cfg.finetune
    name = set_name(f.objective)
    if f.objective != NO_FINETUNING:
        if f.embedding != default_of(FinetuneConfig, "embedding"):
            name += f"+{f.embedding}"
        if f.edm_transfer != default_of(FinetuneConfig, "edm_transfer"):
            name += f"+{f.edm_transfer}-terms"
    return name + guide_suffix(cfg)


def epochs_for(cfg: DistillConfig, ipc: int) -> int | None:
    """evaluate.epochs at one IPC: null (the protocol's), an int, or {"10": 300, "50": 100} by IPC."""
    spec = cfg.evaluate.epochs
    if isinstance(spec, dict):
        return spec.get(str(ipc))
    return spec
