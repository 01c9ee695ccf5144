"""Coreset baselines: pick K real training images per class.

- `random`: uniform without replacement, from a seeded generator.
- `herding` (Welling, ICML 2009; iCaRL's per-class form): greedily add the image that
  keeps the running mean of the chosen features closest to the class mean.
- `kcenter` (Sener & Savarese, ICLR 2018): greedy k-center, each new image the one
  farthest from those already chosen, starting from the one nearest the class mean.
- `medoids`: k-means in feature space (seeded k-means++ start, Lloyd steps), then the image
  nearest each centre: the real "prototypes" D4M-style methods start from.

Herding and k-center work on L2-normalised features of the reference classifier
(`minimaxdd.evaluation.reference_classifier`), trained once on the full training set and cached.
`SELECTORS` maps each name to `pick(ds, ipc, seed, device, feature_epochs) -> indices (K * ipc,)`
into the training set, class by class; `minimaxdd.baselines.registry` turns them into baselines.
"""
from __future__ import annotations

from typing import Callable

import torch

from minimaxdd.data.clustering import kmeans_centres
from minimaxdd.data.dataset import Dataset
from minimaxdd.errors import UserError
from minimaxdd.evaluation.reference_classifier import reference_features
from minimaxdd.runtime import generator

# pick(ds, ipc, seed, device, feature_epochs) -> indices (K * ipc,) into ds.x_train, class-major
Selector = Callable[[Dataset, int, int, torch.device, int | None], torch.Tensor]


def check_ipc(y: torch.Tensor, num_classes: int, ipc: int, names: list[str]) -> None:
    """Refuse an `ipc` below 1 or above the size of some class, naming the short classes."""
    if ipc < 1:
        raise UserError(f"--ipc must be at least 1, got {ipc}")
    counts = torch.bincount(y, minlength=num_classes)
    short = [f"{names[k]} ({int(c)})" for k, c in enumerate(counts) if c < ipc]
    if short:
        raise UserError(f"--ipc {ipc} asks for more images than these classes have: {', '.join(short)}; lower --ipc")


def random_indices(y: torch.Tensor, num_classes: int, ipc: int, seed: int) -> torch.Tensor:
    """`ipc` indices per class drawn uniformly without replacement, class-major: (num_classes * ipc,)."""
    g = generator(seed)
    picks = []
    for k in range(num_classes):
        idx = (y == k).nonzero().squeeze(1)  # (n_k,)
        picks.append(idx[torch.randperm(len(idx), generator=g)[:ipc]])
    return torch.cat(picks)


def herding_order(f: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of k rows of f (n, D) chosen by herding toward the mean of f."""
    mu = f.mean(0)  # (D,)
    chosen: list[int] = []
    total = torch.zeros_like(mu)  # (D,) sum of the chosen rows
    avail = torch.ones(len(f), dtype=torch.bool)
    for t in range(1, k + 1):
        # distance from the class mean of the mean after adding each candidate
        d = ((mu[None] - (total[None] + f) / t) ** 2).sum(1)  # (n,)
        d[~avail] = float("inf")
        i = int(d.argmin())
        chosen.append(i)
        avail[i] = False
        total += f[i]
    return torch.tensor(chosen)


def kcenter_order(f: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of k rows of f (n, D) by greedy k-center, started at the row nearest the mean."""
    first = int(((f - f.mean(0)) ** 2).sum(1).argmin())
    chosen = [first]
    dmin = ((f - f[first]) ** 2).sum(1)  # (n,) squared distance to the nearest chosen row
    for _ in range(k - 1):
        i = int(dmin.argmax())
        chosen.append(i)
        dmin = torch.minimum(dmin, ((f - f[i]) ** 2).sum(1))
    return torch.tensor(chosen)


def medoid_order(f: torch.Tensor, k: int, seed: int, iters: int = 20) -> torch.Tensor:
    """Indices of k distinct rows of f (n, D): k-means (k-means++ seeding from `seed`, Arthur & Vassilvitskii 2007;
    `iters` Lloyd steps; an emptied cluster keeps its centre), then for each centre in turn the nearest row not yet
    taken."""
    c = kmeans_centres(f, k, generator(seed), iters)                               # (k, D)
    d = torch.cdist(c, f)                                                          # (k, n)
    chosen: list[int] = []
    for j in range(k):
        if chosen:
            d[j, chosen] = float("inf")
        chosen.append(int(d[j].argmin()))
    return torch.tensor(chosen)


def feature_indices(order: Callable[..., torch.Tensor], seeded: bool = False) -> Selector:
    """A selector that orders each class's reference-classifier features (n_k, D) by `order(f, k)`, or by
    `order(f, k, seed)` with a seed per class when `seeded`."""
    def pick(ds: Dataset, ipc: int, seed: int, device: torch.device, feature_epochs: int | None) -> torch.Tensor:
        feats = reference_features(ds, device, seed, feature_epochs)                 # (N, D), unit rows
        picks = []
        for k in range(ds.num_classes):
            idx = (ds.y_train == k).nonzero().squeeze(1)  # (n_k,)
            picks.append(idx[order(feats[idx], ipc, seed + k) if seeded else order(feats[idx], ipc)])
        return torch.cat(picks)
    return pick


SELECTORS: dict[str, Selector] = {
    "random": lambda ds, ipc, seed, device, fe: random_indices(ds.y_train, ds.num_classes, ipc, seed),
    "herding": feature_indices(herding_order),
    "kcenter": feature_indices(kcenter_order),
    "medoids": feature_indices(medoid_order, seeded=True),
}
