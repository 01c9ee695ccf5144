"""Sampling guides beside classifier-free guidance, each a change of the denoiser's output D at some noise levels.

Written once on the denoiser interface (`denoisers.Guided` applies them to D, and to the epsilon of the paper's
ancestral sampler through D = x - sigma eps), so they act the same on both formulations and every solver:

    guidance interval  classifier-free guidance only for sigma in (lo, hi], the conditional model alone elsewhere
                       (Kynkaanniemi et al., NeurIPS 2024, "Applying guidance in a limited interval")
    mode guidance      D <- D + lambda (m_i - D) while sigma > stop, m_i the mode assigned to image i: a k-means
                       centre of its class's real training images in the model's space (MGD3, Chan-Santiago et al.,
                       ICML 2025: k = IPC, one mode per generated image, guidance stopped late in the chain)
    deviation          for sigma in (lo, hi], D turned away from the most cosine-similar earlier sample of its class
                       (IGD's deviation guidance, Chen et al., ICLR 2025)

All three are pure functions of tensors here; `Guides` carries their settings and per-image tensors for a batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from minimaxdd.data.clustering import kmeans_centres

# IGD keeps the last 64 samples of the class as the deviation term's memory (mchen725/DD_IGD sample.py,
# --memory-size default 64).
DEVIATION_MEMORY = 64
# The window of IGD's guidance: respaced steps 30 to 45 of DiT's 50 (mchen725/DD_IGD sample_mp.sh and
# sample_mp_minimax.sh, low=30 high=45), i.e. training steps 612 to 917 of 1000, whose noise levels
# sigma_t = sqrt((1 - abar_t) / abar_t) on DiT's linear schedule are 6.66 and 71.1: the early, noisy part.
IGD_SIGMA_LO, IGD_SIGMA_HI = 6.66, 71.1
# Mode guidance acts for the first half of the trajectory: MGD3's scripts sample DiT with 50 DDPM steps and
# stop_t 25 ("stop t from 50 to 0"; T_SG=25 in the woof / nette / imagenet scripts that ManifoldGD carries over
# from jachansantiago/mode_guidance, sample_mode_guidance.py), i.e. training step 500 of 1000, whose
# sigma_t = sqrt((1 - abar_t) / abar_t) on DiT's linear schedule is 3.44. Their strength, mode_guidance_scale
# 0.1, multiplies the posterior std on x_{t-1} there, not D here, so ours is chosen on the validation split.
MGD3_SIGMA_STOP = 3.44
# Kynkaanniemi et al. 2024, Table 1: EDM2-S guided only for sigma in (0.28, 5.42], EDM2-XXL (0.19, 1.61]
# (their FID-optimal intervals on ImageNet-512); recalled, not re-read here.
EDM2_S_INTERVAL = (0.28, 5.42)


def in_interval(sigma: float, lo: float, hi: float | None) -> bool:
    """Whether sigma lies in (lo, hi] (hi None: no upper end)."""
    return sigma > lo and (hi is None or sigma <= hi)


def mode_pull(D: torch.Tensor, modes: torch.Tensor, strength: float) -> torch.Tensor:
    """D moved a share `strength` of the way to each image's mode: D + strength (m - D); both (N, C, H, W)."""
    return D + strength * (modes.to(D) - D)


def nearest_by_cosine(D: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """For each image of D (N, C, H, W), the row of its own memory (N, M, C, H, W) nearest by cosine: (N, C, H, W)."""
    d = torch.nn.functional.normalize(D.flatten(1), dim=1)                    # (N, K)
    m = torch.nn.functional.normalize(memory.flatten(2).to(D), dim=2)         # (N, M, K)
    best = torch.einsum("nk,nmk->nm", d, m).argmax(1)                         # (N,)
    return memory[torch.arange(len(D)), best].to(D)


def deviation_push(D: torch.Tensor, memory: torch.Tensor, strength: float) -> torch.Tensor:
    """D turned away from its most cosine-similar memory row m: D - strength |D| (m^ - cos D^), hats unit vectors.

    (m^ - cos D^) / |D| is the gradient of cos(D, m) in D, orthogonal to D; the step is scaled by |D|^2 so that it
    keeps D's length to first order and turns D by about strength * sin(angle to m) radians whatever the space's
    scale (pixels in [-1, 1] or scaled latents). IGD's own weight (100-120 on a gradient taken in a DiT latent's
    epsilon space) does not carry over as a number; the strength is chosen on the validation split.
    D (N, C, H, W); memory (N, M, C, H, W) with M >= 1.
    """
    m = nearest_by_cosine(D, memory).flatten(1)                               # (N, K)
    d = D.flatten(1)                                                          # (N, K)
    norm = d.norm(dim=1, keepdim=True).clamp_min(1e-12)                       # (N, 1)
    d_hat, m_hat = d / norm, torch.nn.functional.normalize(m, dim=1)
    cos = (d_hat * m_hat).sum(1, keepdim=True)                                # (N, 1)
    return (d - strength * norm * (m_hat - cos * d_hat)).view_as(D)


@dataclass(frozen=True)
class Guides:
    """The guides of one sampling call; the per-image tensors are aligned with its labels (`take` slices a batch).

    cfg_lo, cfg_hi: classifier-free guidance only for sigma in (cfg_lo, cfg_hi] (hi None: no upper end).
    modes (N, C, H, W): each image's mode, pulled towards with `mode_strength` while sigma > `mode_stop`.
    memory (N, M, C, H, W): each image's earlier samples of its class, pushed from with `deviation` for sigma in
    (dev_lo, dev_hi]; M = 0 (the first image of a class) pushes nothing.
    """

    cfg_lo: float = 0.0
    cfg_hi: float | None = None
    modes: torch.Tensor | None = None
    mode_strength: float = 0.0
    mode_stop: float = MGD3_SIGMA_STOP
    memory: torch.Tensor | None = None
    deviation: float = 0.0
    dev_lo: float = IGD_SIGMA_LO
    dev_hi: float | None = IGD_SIGMA_HI

    def take(self, rows: torch.Tensor) -> Guides:
        """The guides of the images at `rows` (indices into the call's labels)."""
        return replace(self, modes=None if self.modes is None else self.modes[rows],
                       memory=None if self.memory is None else self.memory[rows])

    def guidance_here(self, sigma: float) -> bool:
        """Whether classifier-free guidance applies at sigma."""
        return in_interval(sigma, self.cfg_lo, self.cfg_hi)

    def changes_D(self, sigma: float) -> bool:
        """Whether mode guidance or the deviation term moves D at sigma."""
        return self._modes_here(sigma) or self._deviation_here(sigma)

    def _modes_here(self, sigma: float) -> bool:
        return self.modes is not None and self.mode_strength > 0 and sigma > self.mode_stop

    def _deviation_here(self, sigma: float) -> bool:
        return (self.memory is not None and self.memory.shape[1] > 0 and self.deviation > 0
                and in_interval(sigma, self.dev_lo, self.dev_hi))

    def adjust(self, D: torch.Tensor, sigma: float) -> torch.Tensor:
        """D (N, C, H, W) with the guides that act at sigma applied: mode guidance, then the deviation term."""
        if self._modes_here(sigma):
            D = mode_pull(D, self.modes, self.mode_strength)
        if self._deviation_here(sigma):
            D = deviation_push(D, self.memory, self.deviation)
        return D

    def adjust_eps(self, eps: torch.Tensor, x_t: torch.Tensor, sigma: float) -> torch.Tensor:
        """The same change on the epsilon of a DDPM state x_t = alpha x (alpha = 1 / sqrt(1 + sigma^2)): D = x - sigma
        eps is adjusted and eps recovered from it, so the ancestral sampler's x0 estimate moves exactly as D does."""
        x = x_t * math.sqrt(1 + sigma ** 2)                                    # EDM's scaling
        return (x - self.adjust(x - sigma * eps, sigma)) / sigma


def kmeans(f: torch.Tensor, k: int, g: torch.Generator, iters: int = 20) -> torch.Tensor:
    """k centres of the rows of f (n, K): k-means++ seeding drawn from `g` (Arthur & Vassilvitskii 2007), then
    `iters` Lloyd steps (an emptied cluster keeps its centre); (k, K), ordered by cluster size, largest first
    (ties by index), so the same data and generator give the same centres in the same order."""
    return kmeans_clusters(f, k, g, iters)[0]


def kmeans_clusters(f: torch.Tensor, k: int, g: torch.Generator, iters: int = 20
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """`kmeans`'s centres (k, K), largest cluster first, and each row's cluster in that order (n,)."""
    c = kmeans_centres(f, k, g, iters)                                         # (k, K)
    assign = torch.cdist(f, c).argmin(1)                                       # (n,)
    sizes = torch.bincount(assign, minlength=k)                                # (k,)
    order = sorted(range(k), key=lambda j: (-int(sizes[j]), j))
    rank = torch.empty(k, dtype=torch.long)
    rank[torch.tensor(order)] = torch.arange(k)
    return c[order], rank[assign]


def class_modes(x: torch.Tensor, labels: torch.Tensor, classes: list[int], k: int, seed: int,
                feats: torch.Tensor | None = None, medoid: bool = False) -> dict[int, torch.Tensor]:
    """{class: its k modes (k, C, H, W) in x's space}, x (N, C, H, W) in the model's space, each class from its own
    generator (seed, class), so a class's modes do not depend on which other classes are asked.

    feats None: the class's rows of x are clustered by k-means (MGD3's modes, in the model's space).
    feats (N, D), rows aligned with x: the clusters are found by k-means on the class's feature rows instead.
    Each mode is then, medoid False, its cluster's centre in x's space (the k-means centre; with feats, the mean of
    the cluster's members), or, medoid True, the member nearest that centre in the space it was clustered in: a real
    image, not an average. A cluster left empty by the last assignment (only duplicate rows do that) takes the
    member nearest its centre."""
    out = {}
    for c in classes:
        members = labels == c
        rows = x[members].flatten(1).float()                                   # (n_c, K)
        if len(rows) < k:
            raise ValueError(f"class {c} has {len(rows)} training images, fewer than the {k} modes asked")
        g = torch.Generator().manual_seed(seed * 1_000_003 + c)
        space = rows if feats is None else feats[members].float()              # (n_c, K) or (n_c, D)
        centres, assign = kmeans_clusters(space, k, g)                         # (k, K or D), (n_c,)
        if feats is None and not medoid:
            out[c] = centres.view(k, *x.shape[1:])
            continue
        modes = torch.empty(k, rows.shape[1])
        for j in range(k):
            mine = (assign == j).nonzero().squeeze(1)                           # (m,) the cluster's members
            if len(mine) == 0:
                mine = torch.cdist(centres[j:j + 1], space).argmin(1)           # (1,)
            if medoid:
                modes[j] = rows[mine[torch.cdist(centres[j:j + 1], space[mine]).argmin()]]
            else:
                modes[j] = rows[mine].mean(0)
        out[c] = modes.view(k, *x.shape[1:])
    return out
