"""The measuring stick: train a classifier on a (small) set, test it on the real test set.

Tensors in, numbers out. The whole training set lives as one normalised tensor on the
device, augmentation is batched (augment.py), and the reported figure is the test accuracy
after the *last* epoch, mean and std over repeats with different seeds. The test set is
touched once per repeat, after training; it never picks an epoch or a model.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

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
from minimaxdd.evaluation.protocols import Protocol
from minimaxdd.runtime import autocast, generator, progress


def _augment_fn(protocol: Protocol):
    if protocol.augment == "dsa":
        return augment.dsa
    if protocol.augment == "rrc_flip":
        return augment.rrc_flip
    if protocol.augment == "none":
        return lambda x, g: x
    raise UserError(f"protocol {protocol.name} names unknown augmentation {protocol.augment!r}")


def train_classifier(x: torch.Tensor, y: torch.Tensor, model_name: str, num_classes: int,
                     protocol: Protocol, epochs: int, seed: int, device: torch.device,
                     precision: str = "bf16", desc: str = "train", compile: bool = False) -> nn.Module:
    """Train `model_name` from scratch on normalised images x (N, C, H, W) float on `device`
    and labels y (N,) with `protocol`, for `epochs` epochs. Returns the model in eval mode.

    `compile` trains through torch.compile: a one-off compile of seconds on a CPU, then fused norm and
    activation kernels (BENCHMARKS.md, "With `evaluate --compile`")."""
    n, c, h, _ = x.shape
    with torch.random.fork_rng(devices=[]):  # initialisation from the seed, global RNG untouched
        torch.manual_seed(seed)
        model = build_model(model_name, c, num_classes, h).to(device)
    g = generator(seed + 1_000_003, device)
    opt = torch.optim.SGD(model.parameters(), lr=protocol.lr, momentum=protocol.momentum,
                          weight_decay=protocol.weight_decay)
    milestones = sorted({max(1, int(round(epochs * m))) for m in protocol.milestones})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=protocol.gamma)
    aug = _augment_fn(protocol)
    bs = protocol.batch_size
    net = torch.compile(model) if compile else model   # shares the parameters with `model`
    model.train()
    bar = progress(range(epochs), desc=desc)
    for _ in bar:
        perm = torch.randperm(n, generator=g, device=device)
        correct = seen = 0
        loss_sum = 0.0
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            xb, yb = aug(x[idx], g), y[idx]
            use_cutmix = protocol.cutmix_p > 0 and torch.rand(1, generator=g, device=device).item() < protocol.cutmix_p
            with autocast(device, precision):
                if use_cutmix:
                    xb, ya, yb2, lam = augment.cutmix(xb, yb, g, protocol.cutmix_beta)
                    out = net(xb)
                    loss = lam * F.cross_entropy(out, ya) + (1 - lam) * F.cross_entropy(out, yb2)
                else:
                    out = net(xb)
                    loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += (out.argmax(1) == yb).sum().item()
            seen += len(idx)
        sched.step()
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", train_acc=f"{correct / seen:.3f}")
    model.eval()
    return model


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, precision: str = "bf16", batch_size: int = 1024) -> torch.Tensor:
    """Class predictions (N,) for normalised images x."""
    dev = next(model.parameters()).device
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

    def to_dict(self) -> dict:
        return asdict(self)


def images_per_class(y: torch.Tensor, num_classes: int) -> int | None:
    counts = torch.bincount(y.cpu(), minlength=num_classes)
    return int(counts[0]) if bool((counts == counts[0]).all()) else None


def evaluate_set(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                 num_classes: int, model: str = "convnet3", protocol: Protocol | None = None,
                 repeats: int = 3, epochs: int | None = None, seed: int = 0, device: str | torch.device = "cpu",
                 precision: str = "bf16", stats: tuple[torch.Tensor, torch.Tensor] | None = None,
                 compile: bool = False) -> EvalResult:
    """Train `repeats` classifiers on uint8 images x_train (N, C, H, W) with labels y_train and
    report their final test accuracy on (x_test, y_test).

    `stats` is the (mean, std) used to standardise both sets, by default that of x_train;
    pass the real training set's so synthetic and real images share one normalisation.
    Repeat r uses seed `seed + r` for initialisation, order and augmentation.
    """
    from minimaxdd.evaluation.protocols import PROTOCOLS

    protocol = protocol or PROTOCOLS["dc"]
    if repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {repeats}")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(f"training images {tuple(x_train.shape[1:])} and test images {tuple(x_test.shape[1:])} differ in shape")
    device = torch.device(device)
    ipc = images_per_class(y_train, num_classes)
    n_epochs = epochs if epochs is not None else protocol.epochs_for(ipc, num_classes)
    mean, std = stats if stats is not None else channel_stats(x_train)
    xtr, ytr = normalise(x_train, mean, std, device), y_train.to(device)
    xte = normalise(x_test, mean, std, device)
    t0 = time.time()
    done = {}
    for r in range(dist.rank(), repeats, dist.world()):   # under torchrun, repeats are spread over ranks
        net = train_classifier(xtr, ytr, model, num_classes, protocol, n_epochs, seed + r, device, precision,
                               desc=f"{model} run {r + 1}/{repeats}", compile=compile)
        done[r] = accuracy(predict(net, xte, precision), y_test, num_classes)
        progress_note(f"{model} run {r + 1}/{repeats}: test accuracy {done[r][0]:.4f}")
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
        protocol_config=protocol.to_dict(),
    )


def progress_note(msg: str) -> None:
    """A line beside the progress bars (tqdm.write keeps bars intact)."""
    if os.environ.get("MINIMAXDD_QUIET") != "1":
        tqdm.write(msg)


@dataclass
class EvaluateConfig:
    synth: str | None          # synthetic set path; None with full=True
    real: str
    model: str = "convnet3"
    protocol: str = "dc"
    repeats: int = 3
    epochs: int | None = None
    seed: int = 0
    full: bool = False
    size: int | None = None
    device: str = "auto"
    precision: str = "bf16"
    out: str | None = None
    compile: bool = False              # train the classifiers through torch.compile
    generation_accuracy: bool = False   # also score the set with the full-data reference classifier


def run(cfg: EvaluateConfig) -> dict:
    """Evaluate a synthetic set (or, with `full`, the real training set) against the real test set."""
    from minimaxdd.data.sources import load_dataset
    from minimaxdd.data.synthetic import conform, load_synthetic
    from minimaxdd.evaluation.protocols import get_protocol
    from minimaxdd.files import write_json
    from minimaxdd.runtime import pick_device

    protocol = get_protocol(cfg.protocol)
    real = load_dataset(cfg.real, size=cfg.size)
    if cfg.full:
        x, y = real.x_train, real.y_train
    elif cfg.synth is None:
        raise UserError("evaluate needs a synthetic set (SYNTH) or --full")
    else:
        s = conform(load_synthetic(cfg.synth), real.class_names, real.channels, real.size)
        x, y = s.images, s.labels
    res = evaluate_set(x, y, real.x_test, real.y_test, real.num_classes, cfg.model, protocol, cfg.repeats,
                       cfg.epochs, cfg.seed, dist.setup(pick_device(cfg.device)), cfg.precision, stats=channel_stats(real.x_train),
                       compile=cfg.compile)
    out = {**res.to_dict(), "synth": "full" if cfg.full else cfg.synth, "real": cfg.real,
           "class_names": real.class_names, "config": asdict(cfg)}
    if cfg.generation_accuracy and not cfg.full:
        from minimaxdd.evaluation.reference_classifier import generation_accuracy
        out["generation"] = generation_accuracy(real, x, y, device=pick_device(cfg.device))
    if cfg.out and dist.is_main():
        write_json(cfg.out, out)
    return out


def format_table(rows: list[dict]) -> str:
    """A plain-text table of results: method, IPC, model, protocol, epochs, accuracy mean +- std (%)."""
    head = f"{'method':<14}{'ipc':>6}  {'model':<11}{'protocol':<9}{'epochs':>7}  {'accuracy (%)':>15}"
    lines = [head, "-" * len(head)]
    for r in rows:
        ipc = "full" if r.get("synth") == "full" or r.get("method") == "full" else ("-" if r.get("ipc") is None else str(r["ipc"]))
        lines.append(f"{r.get('method', r.get('synth', '?'))!s:<14.14}{ipc:>6}  {r['model']:<11}{r['protocol']:<9}"
                     f"{r['epochs']:>7}  {100 * r['mean']:>8.2f} +- {100 * r['std']:.2f}")
    return "\n".join(lines)
