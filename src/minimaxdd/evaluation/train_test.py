"""The measuring stick: train a classifier on a (small) set, test it on the real test set.

Tensors in, numbers out. The whole training set lives as one normalised tensor on the
device, augmentation is batched (`minimaxdd.data.augment`), and the reported figure is the test accuracy
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
from minimaxdd.evaluation.protocols import PROTOCOLS, Protocol
from minimaxdd.runtime import autocast, generator, progress


def _augment_fn(protocol: Protocol) -> augment.Augmentation:
    """The batch augmentation the protocol names, from `minimaxdd.data.augment.AUGMENTATIONS`."""
    if protocol.augment not in augment.AUGMENTATIONS:
        raise UserError(f"protocol {protocol.name} names unknown augmentation {protocol.augment!r}; "
                        f"known: {', '.join(augment.AUGMENTATIONS)}")
    return augment.AUGMENTATIONS[protocol.augment]


# ours: the training-order / augmentation stream of repeat `seed` is seeded with seed + this prime, so it
# never coincides with the initialisation seed of another repeat (seed + r for r < 1_000_003)
ORDER_SEED_OFFSET = 1_000_003


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
    g = generator(seed + ORDER_SEED_OFFSET, device)
    opt = torch.optim.SGD(model.parameters(), lr=protocol.lr, momentum=protocol.momentum,
                          weight_decay=protocol.weight_decay)
    milestones = sorted({max(1, int(round(epochs * m))) for m in protocol.milestones})  # epochs of the lr drops
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=protocol.gamma)
    aug = _augment_fn(protocol)
    net = torch.compile(model) if compile else model   # shares the parameters with `model`
    model.train()
    bar = progress(range(epochs), desc=desc)
    for _ in bar:
        loss, acc = _train_epoch(net, opt, x, y, aug, protocol, g, device, precision)
        sched.step()
        bar.set_postfix(loss=f"{loss:.3f}", train_acc=f"{acc:.3f}")
    model.eval()
    return model


def _train_epoch(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 aug: augment.Augmentation, protocol: Protocol, g: torch.Generator, device: torch.device,
                 precision: str) -> tuple[float, float]:
    """One pass over (x, y) in a random order drawn from `g`; returns the mean loss and train accuracy."""
    n, bs = len(x), protocol.batch_size
    perm = torch.randperm(n, generator=g, device=device)                   # (N,)
    correct = seen = 0
    loss_sum = 0.0
    for i in range(0, n, bs):
        idx = perm[i:i + bs]
        xb, yb = aug(x[idx], g), y[idx]                                     # (B, C, H, W), (B,)
        use_cutmix = protocol.cutmix_p > 0 and torch.rand(1, generator=g, device=device).item() < protocol.cutmix_p
        with autocast(device, precision):
            if use_cutmix:
                xb, ya, yb2, lam = augment.cutmix(xb, yb, g, protocol.cutmix_beta)
                out = net(xb)                                               # (B, K)
                loss = lam * F.cross_entropy(out, ya) + (1 - lam) * F.cross_entropy(out, yb2)
            else:
                out = net(xb)                                               # (B, K)
                loss = F.cross_entropy(out, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.item() * len(idx)
        correct += (out.argmax(1) == yb).sum().item()
        seen += len(idx)
    return loss_sum / seen, correct / seen


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
        """The result as plain JSON data."""
        return asdict(self)


def images_per_class(y: torch.Tensor, num_classes: int) -> int | None:
    """The common class size of labels y (N,), or None when classes differ in size (an empty one counts)."""
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
    protocol = protocol or PROTOCOLS["dc"]
    if repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {repeats}")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(f"training images {tuple(x_train.shape[1:])} and test images {tuple(x_test.shape[1:])} "
                        "differ in shape")
    device = torch.device(device)
    ipc = images_per_class(y_train, num_classes)
    n_epochs = epochs if epochs is not None else protocol.epochs_for(ipc, num_classes)
    mean, std = stats if stats is not None else channel_stats(x_train)
    xtr, ytr = normalise(x_train, mean, std, device), y_train.to(device)   # (N, C, H, W), (N,)
    xte = normalise(x_test, mean, std, device)                             # (M, C, H, W)
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
