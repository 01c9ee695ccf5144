"""k-means on feature rows, shared by the medoid baseline (`baselines.coreset`) and mode guidance
(`diffusion.guides`)."""
from __future__ import annotations

import torch


def kmeans_centres(f: torch.Tensor, k: int, g: torch.Generator, iters: int = 20) -> torch.Tensor:
    """k centres (k, D) of the rows of f (n, D): k-means++ seeding drawn from `g` (Arthur & Vassilvitskii 2007),
    then `iters` Lloyd steps (an emptied cluster keeps its centre); in seeding order."""
    if not 1 <= k <= len(f):
        raise ValueError(f"need 1 <= k <= {len(f)} rows, got k={k}")
    centres = [f[int(torch.randint(len(f), (1,), generator=g))]]
    d2 = ((f - centres[0]) ** 2).sum(1)                                        # (n,) to the nearest centre
    for _ in range(k - 1):
        p = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1 / len(f))  # D^2 weighting
        centres.append(f[int(torch.multinomial(p, 1, generator=g))])
        d2 = torch.minimum(d2, ((f - centres[-1]) ** 2).sum(1))
    c = torch.stack(centres).clone()                                           # (k, D)
    for _ in range(iters):
        assign = torch.cdist(f, c).argmin(1)                                   # (n,)
        for j in range(k):
            members = assign == j
            if members.any():
                c[j] = f[members].mean(0)
    return c
