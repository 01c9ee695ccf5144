"""`minimaxdd evaluate`: a synthetic set (or the full real training set) from disk through the protocol,
with the reference classifier's generation accuracy on request; results as a table or JSON."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from minimaxdd import distributed as dist
from minimaxdd.data.dataset import channel_stats
from minimaxdd.data.sources import load_dataset
from minimaxdd.data.synthetic import conform, load_synthetic
from minimaxdd.errors import UserError
from minimaxdd.evaluation.classifiers import CLASSIFIERS as MODELS
from minimaxdd.evaluation.protocols import PROTOCOLS, get_protocol
from minimaxdd.evaluation.reference_classifier import generation_accuracy
from minimaxdd.evaluation.teachers import get_teacher
from minimaxdd.evaluation.train_test import BEST_OF_CHECKS, evaluate_set
from minimaxdd.files import check_file_out, input_paths, write_json
from minimaxdd.precision import describe_precision, precision_line, resolve_precision
from minimaxdd.runtime import PRECISIONS, pick_device
from minimaxdd.settings import AT_LEAST_1, run_field, setting


@dataclass(kw_only=True)
class EvaluateConfig:
    synth: str | None = run_field(None, help="synthetic-set dir, ImageFolder, .pt or .npz")
    real: str = run_field(help="dataset spec NAME[:ARG] (`minimaxdd datasets` lists the sources)")
    full: bool = run_field(False, help="train on the whole real training set instead")
    out: str | None = run_field(None, help="write the result as JSON here")
    seed: int = run_field(0)
    size: int | None = run_field(None, help="image side the real dataset is decoded (folders) or resized to")
    device: str = run_field("auto")
    allow_missing_classes: bool = run_field(False, help="evaluate a set that lacks some classes (warned; their "
                                                        "test images count as errors) instead of refusing it")
    # `classifier`, not `model`: in `train` and `finetune`, --model names the denoiser
    classifier: str = setting("convnet3", choices=tuple(MODELS), help="the classifier trained on the set")
    protocol: str = setting("dc", choices=tuple(PROTOCOLS),
                            help="training recipe and augmentation; *-soft: the same with a teacher's soft labels")
    repeats: int = setting(3, bounds=AT_LEAST_1, help="classifiers trained, each with its own seed")
    epochs: int | None = setting(None, bounds=AT_LEAST_1,
                                 help="override the protocol's epoch count (quick runs; say so when quoting)")
    precision: str = setting("auto", choices=PRECISIONS, help="autocast for training; auto: bf16 where this "
                                                              "machine runs it fast, else fp32")
    compile: bool = setting(False, help="train the classifiers through torch.compile (a compile of seconds, "
                                        "then faster steps; BENCHMARKS.md)")
    generation_accuracy: bool = setting(False, help="also report how often a full-data classifier assigns each "
                                                    "image to its own class")
    # The paper's tables give 256 px for the ImageNet subsets; the authors' code trains and tests at 224
    # (vimar-gu/MinimaxDiffusion, IDC's transform_imagenet): 224 reproduces that, null keeps the data's side.
    image_size: int | None = setting(None, bounds=AT_LEAST_1,
                                     help="side the classifiers train and test at (both sets resized); "
                                                "null: the data's (256 for the ImageNet subsets, as the paper's "
                                                "tables); the authors' code uses 224")
    teacher_epochs: int | None = setting(None, bounds=AT_LEAST_1,
                                         help="soft protocols: epochs of the teacher on the full training set "
                                                    "(cached); null: the protocol's teacher recipe (dc-soft / "
                                                    "idc-soft: about 100k images seen; rded: DD-Ranking's 200)")
    teacher_file: str | None = setting(None, help="soft protocols on an ImageNet subset: a ResNet-18 state dict "
                                                  "in torchvision's layout (ImageNet-1k weights you downloaded) "
                                                  "as the teacher, instead of training one")
    # SRe2L / RDED / DD-Ranking report the best of periodic test checks (RDED: every 10 epochs); ours is final-epoch
    report_best: bool = setting(False, help=f"also test every check_every epochs and record the best check under "
                                            f"\"{BEST_OF_CHECKS}\", for comparison with published tables only; the "
                                            "final-epoch result is unchanged")
    check_every: int | None = setting(None, bounds=AT_LEAST_1,
                                      help="report_best: epochs between test checks (the last is always checked); "
                                           "null: a tenth of the epochs")


def run_evaluation(cfg: EvaluateConfig) -> dict:
    """Evaluate a synthetic set (or, with `full`, the real training set) against the real test set."""

    protocol = get_protocol(cfg.protocol)
    if cfg.synth is None and not cfg.full:
        raise UserError("evaluate needs a synthetic set (SYNTH) or --full")
    check_file_out(cfg.out, input_paths(cfg.synth, cfg.real))     # before the training, not after it
    device = dist.setup(pick_device(cfg.device))
    precision = resolve_precision(cfg.precision, device)
    if dist.is_main():
        print(f"[evaluate] {precision_line(cfg.precision, precision, device)}", flush=True)
    real = load_dataset(cfg.real, size=cfg.size)
    if cfg.full:
        x, y = real.x_train, real.y_train
    else:
        s = conform(load_synthetic(cfg.synth), real.class_names, real.channels, real.size,
                    allow_missing=cfg.allow_missing_classes)
        x, y = s.images, s.labels
    teacher = (get_teacher(protocol, real, cfg.classifier, device, cfg.image_size, cfg.teacher_epochs, precision,
                           cfg.teacher_file) if protocol.soft else None)
    res = evaluate_set(x, y, real.x_test, real.y_test, real.num_classes, cfg.classifier, protocol, cfg.repeats,
                       cfg.epochs, cfg.seed, device, precision, stats=channel_stats(real.x_train),
                       compile=cfg.compile, image_size=cfg.image_size, teacher=teacher.net if teacher else None,
                       teacher_test_accuracy=teacher.test_accuracy if teacher else None,
                       report_best=cfg.report_best, check_every=cfg.check_every)
    out = {**res.to_dict(), "synth": "full" if cfg.full else cfg.synth, "real": cfg.real,
           "class_names": real.class_names, "config": asdict(cfg),
           **describe_precision(cfg.precision, precision, device)}
    if teacher is not None:
        out.update(teacher.record())
    if cfg.generation_accuracy and not cfg.full:
        out["generation"] = generation_accuracy(real, x, y, device=device)
    if cfg.out and dist.is_main():
        write_json(cfg.out, out)
    return out


def format_table(rows: list[dict]) -> str:
    """A plain-text table of results: method, IPC, model, protocol, epochs, accuracy mean +- std (%); the method
    column as wide as its longest name (at least 14), never cut."""
    names = [str(r.get("method", r.get("synth", "?"))) for r in rows]
    w = max([14, *(len(n) + 1 for n in names)])
    head = f"{'method':<{w}}{'ipc':>6}  {'model':<11}{'protocol':<9}{'epochs':>7}  {'accuracy (%)':>15}"
    lines = [head, "-" * len(head)]
    for name, r in zip(names, rows):
        full = r.get("synth") == "full" or r.get("method") == "full"
        ipc = "full" if full else ("-" if r.get("ipc") is None else str(r["ipc"]))
        lines.append(f"{name:<{w}}{ipc:>6}  {r['model']:<11}{r['protocol']:<9}"
                     f"{r['epochs']:>7}  {100 * r['mean']:>8.2f} +- {100 * r['std']:.2f}")
    return "\n".join(lines)
