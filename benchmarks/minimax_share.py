"""The minimax terms' gradient share, per noise level, under the paper's DDPM formulation and under EDM.

    python benchmarks/minimax_share.py --ckpt runs/fm630/base --data fashion-mnist \
        --out benchmarks/results/minimax-share-fashion-mnist.json

One trained EDM network, two loss weightings. At each noise level sigma of a grid, batches of 8 training
images (the fine-tuning batch) are noised at that sigma; the gradient of the diffusion loss and of the
minimax terms (lambda_r L_r + lambda_d L_d at the paper's lambdas, the reference's matrix reduction) over
the Difffit parameters gives the ratio |grad terms| / |grad diffusion|:

    edm    EDM's loss, lambda(sigma) |D - x0|^2 = |F - F*|^2 (unit weight on the network output F)
    ddpm   the paper's L_simple, |eps_hat - eps|^2 = |D - x0|^2 / sigma^2 (the same network read as an
           epsilon predictor under the VP-to-EDM correspondence, x0_hat = D): its gradient is the EDM one
           times c_out^2 / sigma^2 at one sigma, so the ratio is the EDM one times (sigma / c_out)^2

The memories are filled first: per class, 64 real training images and 64 predictions D of other training
images at levels drawn as EDM trains. The share over a formulation's training levels is the ratio averaged
with each grid level's probability under that formulation's draw (EDM: ln sigma ~ N(-1.2, 1.2^2); the
paper: uniform timesteps, sigma_t from 0.01 to 157): "native" is the terms on EDM's estimate as is,
"weight" with the (sigma / c_out)^2 scale at EDM's levels, "paper" with the scale at the paper's levels.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from minimaxdd.data.sources import load_dataset
from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.diffusion.codecs import build_codec
from minimaxdd.diffusion.edm import EDM, P_MEAN, P_STD, ddpm_sigmas
from minimaxdd.files import write_json
from minimaxdd.precision import machine_report
from minimaxdd.training.draws import make_targets
from minimaxdd.training.finetune import FinetuneConfig, select_trainable
from minimaxdd.training.minimax import ClassMemory, minimax_loss

GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def level_probabilities(grid: tuple[float, ...]) -> dict[str, list[float]]:
    """Probability of each grid level's bin (edges at geometric midpoints, the ends open) under EDM's lognormal
    draw and under the paper's uniform timesteps."""
    edges = [0.0] + [math.sqrt(a * b) for a, b in zip(grid, grid[1:])] + [math.inf]
    cdf = [0.0 if e == 0 else 1.0 if e == math.inf else 0.5 * (1 + math.erf((math.log(e) - P_MEAN) /
                                                                            (P_STD * math.sqrt(2)))) for e in edges]
    s = ddpm_sigmas().numpy()
    ddpm = [float(((s >= lo) & (s < hi)).mean()) for lo, hi in zip(edges, edges[1:])]
    return {"edm": [b - a for a, b in zip(cdf, cdf[1:])], "ddpm": ddpm}


def fill_memories(model, edm: EDM, x: torch.Tensor, y: torch.Tensor, classes: int, size: int,
                  g: torch.Generator) -> tuple[ClassMemory, ClassMemory]:
    """Per class, `size` real images and `size` predictions D of other images at EDM's training levels."""
    dim = x[0].numel()
    real, pred = ClassMemory(classes, size, dim), ClassMemory(classes, size, dim)
    for c in range(classes):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)[:2 * size]]
        real.push(y[idx[:size]], x[idx[:size]])
        other = x[idx[size:]]
        sigma = edm.draw_level(len(other), g)
        noisy = other + sigma.view(-1, 1, 1, 1) * torch.randn(other.shape, generator=g)
        with torch.no_grad():
            pred.push(y[idx[size:]], edm.denoise(model, noisy, sigma, y[idx[size:]]))
    return real, pred


def grad_norm(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))


def measure(model, edm: EDM, x, y, real, pred, params, sigma: float, batches: int, batch: int, lambdas,
            g: torch.Generator) -> list[float]:
    """|grad terms| / |grad EDM diffusion loss| for `batches` batches noised at `sigma`."""
    out = []
    for _ in range(batches):
        idx = torch.randperm(len(y), generator=g)[:batch]
        x0, yb = x[idx], y[idx]
        noise = torch.randn(x0.shape, generator=g)
        terms = edm.training_losses(model, x0, torch.full((batch,), sigma), yb, noise)
        extra, _ = minimax_loss(terms["x0_hat"], yb, real, pred, "minimax", *lambdas)
        out.append(grad_norm(extra, params) / grad_norm(terms["loss"].mean(), params))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True, help="an EDM checkpoint or run (pixel codec)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--batches", type=int, default=6, help="batches per level")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    torch.set_flush_denormal(True)
    t0 = time.time()
    model, meta = ckpt.load_network(ckpt.resolve(a.ckpt))
    if meta is None or meta.formulation != "edm":
        raise SystemExit(f"{a.ckpt}: an EDM checkpoint of this package is needed")
    ds = load_dataset(a.data, size=meta.image_size)
    codec = build_codec(meta.codec, ds.channels, ds.size, "cpu")
    targets = make_targets(codec, ds, list(range(ds.num_classes)))
    x, y = targets.x, targets.y
    params = select_trainable(model, "difffit")
    model.eval()
    cfg = FinetuneConfig(ckpt=a.ckpt, data=a.data, out="-")
    lambdas = (cfg.lambda_r, cfg.lambda_d)
    edm, g = EDM(), torch.Generator().manual_seed(a.seed)
    real, pred = fill_memories(model, edm, x, y, ds.num_classes, cfg.memory, g)
    probs = level_probabilities(GRID)
    rows = []
    for sigma in GRID:
        r = measure(model, edm, x, y, real, pred, params, sigma, a.batches, cfg.batch, lambdas, g)
        scale = float(edm.paper_term_scale(torch.tensor(sigma)))
        rows.append({"sigma": sigma, "edm_ratio": float(np.median(r)), "edm_ratio_runs": r, "scale": scale,
                     "ddpm_ratio": float(np.median(r)) * scale})
        print(f"sigma {sigma:>6}: EDM {rows[-1]['edm_ratio']:.3g}, paper (DDPM) {rows[-1]['ddpm_ratio']:.3g} "
              f"(x{scale:.3g})", flush=True)
    e, d = np.array([r["edm_ratio"] for r in rows]), np.array([r["ddpm_ratio"] for r in rows])
    share = {"paper (DDPM levels, DDPM loss)": float(np.dot(probs["ddpm"], d)),
             "edm native (EDM levels, terms as is)": float(np.dot(probs["edm"], e)),
             "edm weight (EDM levels, scaled terms)": float(np.dot(probs["edm"], d)),
             "edm paper (DDPM levels, scaled terms)": float(np.dot(probs["ddpm"], d))}
    above = {k: float(np.dot(probs[lv], r > 1)) for k, lv, r in (
        ("paper (DDPM levels, DDPM loss)", "ddpm", d), ("edm native (EDM levels, terms as is)", "edm", e),
        ("edm weight (EDM levels, scaled terms)", "edm", d), ("edm paper (DDPM levels, scaled terms)", "ddpm", d))}
    for k, v in share.items():
        print(f"{k}: mean ratio over the training levels {v:.3g}; terms stronger than the diffusion loss in "
              f"{100 * above[k]:.0f}% of the draws")
    if a.out:
        write_json(a.out, {"command": f"python benchmarks/minimax_share.py --ckpt {a.ckpt} --data {a.data} "
                                      f"--batches {a.batches}", "lambda_r": lambdas[0], "lambda_d": lambdas[1],
                           "batch": cfg.batch, "memory": cfg.memory, "probabilities": probs, "rows": rows,
                           "share": share, "terms_stronger": above, "seconds": round(time.time() - t0, 1), "machine": machine_report()})


if __name__ == "__main__":
    main()
