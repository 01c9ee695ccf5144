"""The measuring stick: train a classifier on a (small) set, test it on the real test set.

Tensors in, numbers out. The whole training set lives as one normalised tensor on the
device, augmentation is batched (`minimaxdd.data.augment`), and the reported figure is the test accuracy
after the *last* epoch, mean and std over repeats with different seeds. The test set is
touched once per repeat, after training; it never picks an epoch or a model.

One opt-in exception, for comparison with published tables only (`report_best`): SRe2L, RDED and DD-Ranking
report the best of test accuracies checked every few epochs, which lets the test set pick the epoch. With
`report_best` the classifier is also tested every `check_every` epochs and the best check is recorded beside
the final-epoch result, under BEST_OF_CHECKS; it is not a result and nothing chooses by it. The checks run in
eval mode without touching the training's random stream, so the final-epoch accuracy is the same to the bit.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from minimaxdd import distributed as dist
from minimaxdd.data import augment
from minimaxdd.data.dataset import channel_stats, normalise
from minimaxdd.errors import UserError
from minimaxdd.evaluation.classifiers import build_model
from minimaxdd.evaluation.protocols import PROTOCOLS, EvalProtocol, for_classes
from minimaxdd.precision import resolve_precision
from minimaxdd.runtime import autocast, compile_module, generator, progress


def _augment_fn(protocol: EvalProtocol, stats: augment.Stats | None) -> augment.Augmentation:
    """The batch augmentation the protocol names, from `minimaxdd.data.augment.AUGMENTATIONS`, for batches
    standardised with `stats` (the colour ops of `idc` act on pixels)."""
    if protocol.augment not in augment.AUGMENTATIONS:
        raise UserError(f"protocol {protocol.name} names unknown augmentation {protocol.augment!r}; "
                        f"known: {', '.join(augment.AUGMENTATIONS)}")
    return augment.for_protocol(protocol.augment, stats)


BEST_OF_CHECKS = "best of periodic test checks (as published; not a result)"
CHECKS_PER_RUN = 10    # ours: check_every defaults to a tenth of the epochs (RDED checks every 10 of 300 epochs)


def check_epochs(epochs: int, every: int | None = None) -> list[int]:
    """The epochs (1-based, each checked after it ends) of the periodic test checks: every `every` epochs
    (None: epochs // CHECKS_PER_RUN, at least 1), and always the last."""
    k = every or max(1, epochs // CHECKS_PER_RUN)
    return sorted({*range(k, epochs + 1, k), epochs})


# ours: the training-order / augmentation stream of repeat `seed` is seeded with seed + this prime, so it
# never coincides with the initialisation seed of another repeat (seed + r for r < 1_000_003)
ORDER_SEED_OFFSET = 1_000_003


def soft_label_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                    times_t2: bool = True) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) averaged over the batch, times T^2 when `times_t2`
    (Hinton et al. 2015: the T^2 keeps the gradient scale independent of T; RDED and DD-Ranking's default
    leave it out). Logits (B, K) -> a scalar, computed in fp32."""
    t = temperature
    s_log = F.log_softmax(student.float() / t, dim=1)                      # (B, K)
    t_log = F.log_softmax(teacher.float() / t, dim=1)                      # (B, K)
    kl = F.kl_div(s_log, t_log, reduction="batchmean", log_target=True)
    return kl * t * t if times_t2 else kl


def _param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """All parameters with `weight_decay`, or (RDED's validation/utils.py get_parameters) decay only on the
    weights of more than one dimension (conv and linear), none on biases and norm parameters."""
    if decay_norm_and_bias:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    decay = [p for n, p in model.named_parameters() if "weight" in n and p.dim() > 1]
    rest = [p for n, p in model.named_parameters() if not ("weight" in n and p.dim() > 1)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, protocol: EvalProtocol) -> torch.optim.Optimizer:
    """The protocol's optimiser over `model`'s parameters (OPTIMIZERS[protocol.optimizer])."""
    if protocol.optimizer not in OPTIMIZERS:
        raise UserError(f"protocol {protocol.name} names unknown optimizer {protocol.optimizer!r}; "
                        f"known: {', '.join(OPTIMIZERS)}")
    groups = _param_groups(model, protocol.weight_decay, protocol.decay_norm_and_bias)
    return OPTIMIZERS[protocol.optimizer](groups, protocol)


OPTIMIZERS: dict[str, Callable[[list[dict], EvalProtocol], torch.optim.Optimizer]] = {
    "sgd": lambda groups, p: torch.optim.SGD(groups, lr=p.lr, momentum=p.momentum),
    "adamw": lambda groups, p: torch.optim.AdamW(groups, lr=p.lr, betas=p.betas),
}


def make_schedule(opt: torch.optim.Optimizer, protocol: EvalProtocol, epochs: int
                  ) -> torch.optim.lr_scheduler.LRScheduler:
    """The protocol's learning-rate schedule, stepped once per epoch (SCHEDULES[protocol.schedule])."""
    if protocol.schedule not in SCHEDULES:
        raise UserError(f"protocol {protocol.name} names unknown schedule {protocol.schedule!r}; "
                        f"known: {', '.join(SCHEDULES)}")
    return SCHEDULES[protocol.schedule](opt, protocol, epochs)


def half_cosine(epoch: int, epochs: int) -> float:
    """RDED's and DD-Ranking's lr factor at `epoch` of `epochs`: 0.5 (1 + cos(pi epoch / epochs / 2)), half a
    cosine from 1 down to 0.5 (LINs-lab/RDED validation/main.py; DD-Ranking train_and_eval.py "cosine")."""
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs / 2)) if epoch <= epochs else 0.0


def _multistep(opt: torch.optim.Optimizer, p: EvalProtocol, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    milestones = sorted({max(1, int(round(epochs * m))) for m in p.milestones})  # epochs of the lr drops
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=p.gamma)


SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, EvalProtocol, int], torch.optim.lr_scheduler.LRScheduler]] = {
    "multistep": _multistep,
    "half_cosine": lambda opt, p, epochs: torch.optim.lr_scheduler.LambdaLR(opt, lambda e: half_cosine(e, epochs)),
}


@dataclass
class _Run:
    """What every batch of one classifier's training reads."""
    net: nn.Module
    opt: torch.optim.Optimizer
    aug: augment.Augmentation
    protocol: EvalProtocol
    g: torch.Generator
    device: torch.device
    precision: str
    teacher: nn.Module | None = None    # soft protocols: labels each augmented batch
    batch_size: int = 0                 # 0: the protocol's batch_size


def train_classifier(x: torch.Tensor, y: torch.Tensor, model_name: str, num_classes: int,
                     protocol: EvalProtocol, epochs: int, seed: int, device: torch.device,
                     precision: str = "auto", desc: str = "train", compile: bool = False,
                     stats: augment.Stats | None = None, teacher: nn.Module | None = None,
                     after_epoch: Callable[[int, nn.Module], None] | None = None) -> nn.Module:
    """Train `model_name` from scratch on normalised images x (N, C, H, W) float on `device`
    and labels y (N,) with `protocol`, for `epochs` epochs. Returns the model in eval mode.

    `stats`: the (mean, std) that normalised x, for augmentations acting on pixel values (`idc`'s colour
    ops; without it they act on x as if it held pixels in [0, 1]). `teacher`: the frozen network whose
    softened outputs a soft protocol trains on (required by those, refused by the others).
    `compile` trains through torch.compile: a one-off compile of seconds on a CPU, then fused norm and
    activation kernels (BENCHMARKS.md, "With `evaluate --compile`").
    `after_epoch(epoch, model)`: called after each epoch (1-based) with the model in train mode; it must leave
    the model in train mode (the periodic test checks of `evaluate_set`'s `report_best`)."""
    if protocol.soft != (teacher is not None):
        raise UserError(f"protocol {protocol.name} " + ("needs a teacher (reference_classifier.teacher_classifier)"
                                                         if protocol.soft else "trains on hard labels: no teacher"))
    n, c, h, _ = x.shape
    precision = resolve_precision(precision, device)
    with torch.random.fork_rng(devices=[]):  # initialisation from the seed, global RNG untouched
        torch.manual_seed(seed)
        model = build_model(model_name, c, num_classes, h).to(device)
    opt = make_optimizer(model, protocol)
    sched = make_schedule(opt, protocol, epochs)
    run = _Run(compile_module(model) if compile else model,   # the compiled net shares `model`'s parameters
               opt, _augment_fn(protocol, stats), protocol, generator(seed + ORDER_SEED_OFFSET, device), device,
               precision, teacher, protocol.batch_for(images_per_class(y, num_classes), num_classes, n))
    model.train()
    bar = progress(range(epochs), desc=desc)
    for e in bar:
        loss, acc = _train_epoch(run, x, y)
        sched.step()
        bar.set_postfix(loss=f"{loss:.3f}", train_acc=f"{acc:.3f}")
        if after_epoch is not None:
            after_epoch(e + 1, model)
    model.eval()
    return model


def _batch_loss(run: _Run, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits (B, K)) of one augmented batch: CutMix (or Mixup) if the protocol draws it, then
    cross-entropy on the (mixed) labels, or, under a soft protocol, KL to the teacher's outputs on the very
    same mixed images."""
    p, g = run.protocol, run.g
    use_cutmix = p.cutmix_p > 0 and torch.rand(1, generator=g, device=run.device).item() < p.cutmix_p
    ya = yb2 = yb
    lam = 1.0
    if use_cutmix:
        xb, ya, yb2, lam = (augment.mixup(xb, yb, g, p.mixup_alpha) if p.mixing == "mixup"
                            else augment.cutmix(xb, yb, g, p.cutmix_beta))
    with autocast(run.device, run.precision):
        out = run.net(xb)                                                   # (B, K)
        if run.teacher is not None:
            with torch.no_grad():
                target = run.teacher(xb)                                    # (B, K) the teacher's logits
            return soft_label_loss(out, target, p.temperature, p.kl_times_t2), out
        if use_cutmix:
            return lam * F.cross_entropy(out, ya) + (1 - lam) * F.cross_entropy(out, yb2), out
        return F.cross_entropy(out, yb), out


def _train_epoch(run: _Run, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """One pass over (x, y) in a random order drawn from the run's generator; returns the mean loss and
    the training accuracy (against the set's own labels)."""
    n, bs = len(x), run.batch_size or run.protocol.batch_size
    perm = torch.randperm(n, generator=run.g, device=run.device)          # (N,)
    correct = seen = 0
    loss_sum = 0.0
    for i in range(0, n, bs):
        idx = perm[i:i + bs]
        xb, yb = run.aug(x[idx], run.g), y[idx]                             # (B, C, H, W), (B,)
        loss, out = _batch_loss(run, xb, yb)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        loss_sum += loss.item() * len(idx)
        correct += (out.argmax(1) == yb).sum().item()
        seen += len(idx)
    return loss_sum / seen, correct / seen


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, precision: str = "auto", batch_size: int = 1024) -> torch.Tensor:
    """Class predictions (N,) for normalised images x."""
    dev = next(model.parameters()).device
    precision = resolve_precision(precision, dev)
    out = []
    for i in range(0, len(x), batch_size):
        with autocast(dev, precision):
            out.append(model(x[i:i + batch_size].to(dev)).argmax(1))
    return torch.cat(out)


def accuracy(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[float, list[float]]:
    """Overall accuracy and per-class accuracy (NaN for a class absent from y)."""
    hit = (pred.cpu() == y.cpu()).float()
    per = [hit[y.cpu() == k].mean().item() if (y == k).any() else float("nan") for k in range(num_classes)]
    return hit.mean().item(), per


@dataclass
class EvalResult:
    """Final-epoch test accuracy over repeats (fractions in [0, 1])."""
    mean: float
    std: float
    runs: list[float]
    per_class: list[float]          # per-class accuracy, mean over repeats
    model: str
    protocol: str
    epochs: int
    ipc: int | None                 # images per class of the training set; None for unequal
    num_images: int
    seed: int
    precision: str
    train_time_s: float             # wall time of all repeats
    protocol_config: dict = field(default_factory=dict)
    image_size: int | None = None   # the side the classifiers trained and tested at
    teacher_test_accuracy: float | None = None  # soft protocols: the teacher's own test accuracy
    checks: list[list[tuple[int, float]]] | None = None  # report_best: per repeat, (epoch, test accuracy) checks

    def to_dict(self) -> dict:
        """The result as plain JSON data; with periodic checks, their summary under BEST_OF_CHECKS (and no
        `checks` key without them, so default records are as before)."""
        d = asdict(self)
        del d["checks"]
        if self.checks is not None:
            d[BEST_OF_CHECKS] = best_of_checks(self.checks)
        return d


def best_of_checks(checks: list[list[tuple[int, float]]]) -> dict:
    """The record of periodic test checks (fractions in [0, 1]): per repeat the best check, their mean and std,
    the checked epochs and every check. For comparison with published tables only: the test set picked it."""
    best = [max(a for _, a in c) for c in checks]
    return {"mean": float(np.mean(best)), "std": float(np.std(best)), "runs": best,
            "epochs_checked": [e for e, _ in checks[0]], "checks": [[a for _, a in c] for c in checks],
            "note": "the test set picks the epoch here; the result is the final-epoch `mean`"}


def _test_checker(at: list[int], x_test: torch.Tensor, y_test: torch.Tensor, num_classes: int, precision: str,
                  log: list[tuple[int, float]]) -> Callable[[int, nn.Module], None]:
    """An `after_epoch` that tests the model on (x_test, y_test) after each epoch in `at` but the last (the
    final-epoch test gives that one), appending (epoch, accuracy) to `log`. The model is switched to eval mode
    for the test and back: no normalisation statistic or random stream of the training moves."""
    def check(epoch: int, model: nn.Module) -> None:
        if epoch in at[:-1]:
            model.eval()
            log.append((epoch, accuracy(predict(model, x_test, precision), y_test, num_classes)[0]))
            model.train()
    return check


def images_per_class(y: torch.Tensor, num_classes: int) -> int | None:
    """The common class size of labels y (N,), or None when classes differ in size (an empty one counts)."""
    counts = torch.bincount(y.cpu(), minlength=num_classes)
    return int(counts[0]) if bool((counts == counts[0]).all()) else None


def resize_images(x: torch.Tensor, size: int, chunk: int = 512) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size), bilinear with antialiasing, in chunks to bound memory."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    out = torch.empty((len(x), x.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, len(x), chunk):
        y = F.interpolate(x[i:i + chunk].float(), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)                              # (chunk, C, size, size)
        out[i:i + chunk] = y.round().clamp(0, 255).to(torch.uint8)
    return out


def evaluate_set(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                 num_classes: int, model: str = "convnet3", protocol: EvalProtocol | None = None,
                 repeats: int = 3, epochs: int | None = None, seed: int = 0, device: str | torch.device = "cpu",
                 precision: str = "auto", stats: tuple[torch.Tensor, torch.Tensor] | None = None,
                 compile: bool = False, image_size: int | None = None,
                 teacher: nn.Module | None = None, teacher_test_accuracy: float | None = None,
                 report_best: bool = False, check_every: int | None = None, held_out: str = "test") -> EvalResult:
    """Train `repeats` classifiers on uint8 images x_train (N, C, H, W) with labels y_train and
    report their final test accuracy on (x_test, y_test).
    `held_out` names (x_test, y_test) in progress lines: "validation" where a caller passes held-out training
    images (`choose`), so a log never says "test" for a score that selects.

    `stats` is the (mean, std) used to standardise both sets, by default that of x_train;
    pass the real training set's so synthetic and real images share one normalisation.
    `image_size`: train and test at this side (both sets resized, antialiased; the authors' code trains
    and tests at 224 where the paper's tables say 256); None: as the images are.
    `teacher`: the frozen network a soft protocol learns from, at the same image size (see
    `reference_classifier.teacher_classifier`).
    Repeat r uses seed `seed + r` for initialisation, order and augmentation.
    `report_best`: also test every `check_every` epochs (`check_epochs`) and record the best check beside the
    result (`EvalResult.checks`, BEST_OF_CHECKS); off, the test set is touched only after the last epoch.
    """
    protocol = for_classes(protocol or PROTOCOLS["dc"], num_classes)
    if repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {repeats}")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(f"training images {tuple(x_train.shape[1:])} and test images {tuple(x_test.shape[1:])} "
                        "differ in shape")
    if image_size is not None:
        if image_size < 8:
            raise UserError(f"the evaluation image size must be at least 8 pixels, got {image_size}")
        x_train, x_test = resize_images(x_train, image_size), resize_images(x_test, image_size)
    device = torch.device(device)
    precision = resolve_precision(precision, device)       # recorded as used, not as asked
    ipc = images_per_class(y_train, num_classes)
    n_epochs = epochs if epochs is not None else protocol.epochs_for(ipc, num_classes)
    mean, std = stats if stats is not None else channel_stats(x_train)
    xtr, ytr = normalise(x_train, mean, std, device), y_train.to(device)   # (N, C, H, W), (N,)
    xte = normalise(x_test, mean, std, device)                             # (M, C, H, W)
    t0 = time.time()
    done = {}
    at = check_epochs(n_epochs, check_every) if report_best else []
    for r in range(dist.rank(), repeats, dist.world()):   # under torchrun, repeats are spread over ranks
        log: list[tuple[int, float]] = []
        net = train_classifier(xtr, ytr, model, num_classes, protocol, n_epochs, seed + r, device, precision,
                               desc=f"{model} run {r + 1}/{repeats}", compile=compile, stats=(mean, std),
                               teacher=teacher,
                               after_epoch=_test_checker(at, xte, y_test, num_classes, precision, log) if at else None)
        acc, per = accuracy(predict(net, xte, precision), y_test, num_classes)
        done[r] = acc, per, [*log, (n_epochs, acc)]
        progress_note(f"{model} run {r + 1}/{repeats}: {held_out} accuracy {acc:.4f}")
    if dist.world() > 1:
        for part in dist.all_gather_objects(done):
            done.update(part)
    runs = [done[r][0] for r in range(repeats)]
    per_class = [done[r][1] for r in range(repeats)]
    return EvalResult(
        mean=float(np.mean(runs)), std=float(np.std(runs)), runs=runs,
        per_class=np.nanmean(np.array(per_class, dtype=float), axis=0).tolist(),
        model=model, protocol=protocol.name, epochs=n_epochs, ipc=ipc, num_images=len(x_train),
        seed=seed, precision=precision, train_time_s=round(time.time() - t0, 2),
        protocol_config=protocol.to_dict(), image_size=int(x_train.shape[-1]),
        teacher_test_accuracy=teacher_test_accuracy,
        checks=[done[r][2] for r in range(repeats)] if report_best else None,
    )


def progress_note(msg: str) -> None:
    """A line beside the progress bars (tqdm.write keeps bars intact)."""
    if os.environ.get("MINIMAXDD_QUIET") != "1":
        tqdm.write(msg)
