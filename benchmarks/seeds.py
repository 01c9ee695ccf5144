"""Seed spread of a distill run's generated set, beside random real images at several selection seeds.

The distill pipeline samples one set (seed 0) and evaluates it with 3 classifier repeats. This script
resamples the run's fine-tuned model with other sampling seeds (same settings, including the guidance
scale the `choose` stage picked on training data) and evaluates each set the same way; random real
images are drawn with as many selection seeds. Optional rows, each reported on its own:

  --pool K   "generate many, keep few": K x IPC samples per class, IPC kept by herding in the reference
             classifier's feature space; its control keeps IPC of the same pool at random.
  --prototypes SIGMA
             "start from real prototypes" (as D4M / SDEdit): IPC real class medoids (k-means in the
             reference classifier's feature space, seeded), noised to SIGMA and denoised by the EDM
             model (Heun on the tail of EDM's sigma grid); its control is the medoids themselves.

    python benchmarks/seeds.py runs/fm-unet --seeds 0,1,2 --ipc 10,50 --pool 5 --out runs/fm-unet/seeds.json

Per row: the mean and std over seeds of each seed's mean accuracy, and every run. The test set is read only
to report; nothing here chooses anything.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from minimaxdd.baselines.coreset import herding_order
from minimaxdd.baselines.registry import select
from minimaxdd.data.dataset import channel_stats
from minimaxdd.data.sources import load_dataset
from minimaxdd.data.synthetic import SyntheticSet
from minimaxdd.diffusion import checkpoints as ckpts
from minimaxdd.diffusion.codecs import build_codec
from minimaxdd.diffusion.edm import guided_denoiser, heun, sigma_steps
from minimaxdd.diffusion.generation import SampleConfig, sample_checkpoint
from minimaxdd.evaluation.protocols import get_protocol
from minimaxdd.evaluation.reference_classifier import ReferenceConfig, embed, reference_classifier
from minimaxdd.evaluation.train_test import evaluate_set
from minimaxdd.files import write_json
from minimaxdd.runtime import flush_denormals, generator


def prefix(s: SyntheticSet, k: int) -> SyntheticSet:
    keep = torch.cat([(s.labels == c).nonzero().squeeze(1)[:k] for c in range(len(s.class_names))])
    return SyntheticSet(s.images[keep], s.labels[keep], s.class_names)


def keep_by(s: SyntheticSet, k: int, feats: torch.Tensor | None, seed: int) -> SyntheticSet:
    """k images per class of pool s: by herding on `feats` (unit rows), or at random when feats is None."""
    g, keep = generator(seed), []
    for c in range(len(s.class_names)):
        idx = (s.labels == c).nonzero().squeeze(1)
        order = herding_order(feats[idx], k) if feats is not None else torch.randperm(len(idx), generator=g)[:k]
        keep.append(idx[order])
    keep = torch.cat(keep)
    return SyntheticSet(s.images[keep], s.labels[keep], s.class_names)


def medoids(feats: torch.Tensor, k: int, seed: int, iters: int = 20) -> torch.Tensor:
    """Indices of k medoids of feats (n, D): k-means (seeded init) then the member nearest each centre."""
    g = generator(seed)
    centres = feats[torch.randperm(len(feats), generator=g)[:k]].clone()          # (k, D)
    for _ in range(iters):
        assign = torch.cdist(feats, centres).argmin(1)                             # (n,)
        for j in range(k):
            if (assign == j).any():
                centres[j] = feats[assign == j].mean(0)
    return torch.cdist(centres, feats).argmin(1)                                   # (k,) may repeat rarely


def from_prototypes(ckpt: str, real: SyntheticSet, sigma: float, sample: dict, seed: int, device: str) -> SyntheticSet:
    """Real images noised to `sigma` and denoised by the run's EDM model, each keeping its class."""
    model, meta = ckpts.load(ckpt, "ema", device)
    if meta.formulation != "edm":
        raise SystemExit("--prototypes needs a model of the edm formulation")
    codec = build_codec(meta.codec, meta.channels, meta.image_size, device)
    x0 = codec.encode(real.images.to(device))                                      # (N, C, H, W) in [-1, 1]
    grid = sigma_steps(sample.get("steps") or 18)
    sigmas = torch.cat([torch.tensor([sigma], dtype=torch.float64), grid[grid < sigma]])
    noise = torch.randn(x0.shape, generator=generator(seed)).to(device)
    y = torch.as_tensor(meta.class_map)[real.labels].to(device)
    with torch.no_grad():
        x = heun(guided_denoiser(model, y, sample.get("cfg", 1.0)), x0 + sigma * noise, sigmas)
    return SyntheticSet(codec.decode(x.clamp(-1, 1)).cpu(), real.labels, real.class_names)


def real_medoids(ds, k: int, feats_of, seed: int) -> SyntheticSet:   # noqa: ANN001
    """k real medoids per class of ds's training set in the reference feature space."""
    keep = []
    for c in range(ds.num_classes):
        idx = (ds.y_train == c).nonzero().squeeze(1)
        keep.append(idx[medoids(feats_of(ds.x_train[idx]), k, seed + c)])
    keep = torch.cat(keep)
    return SyntheticSet(ds.x_train[keep], ds.y_train[keep], list(ds.class_names))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a distill run directory")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--ipc", default=None, help="comma separated (default: the run's)")
    ap.add_argument("--pool", type=int, default=0, help="K: also the generate-K-x-IPC-keep-IPC rows")
    ap.add_argument("--prototypes", type=float, default=0.0, help="SIGMA: also the start-from-real-prototypes rows")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 beside another job on 2 cores)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    flush_denormals()
    if a.threads:
        torch.set_num_threads(a.threads)
    run = Path(a.run)
    cfg = json.loads((run / "config.json").read_text())
    chosen = json.loads((run / "choose" / "stage.json").read_text()) if (run / "choose" / "stage.json").exists() else {}
    sample = {**cfg["sample"], **(chosen.get("sample") or {})}
    ckpt = json.loads((run / "finetune" / "stage.json").read_text())["checkpoint"]
    ev, seeds = cfg["evaluate"], [int(s) for s in a.seeds.split(",")]
    ipcs = [int(k) for k in a.ipc.split(",")] if a.ipc else cfg["ipc"]
    ds = load_dataset(cfg["data"], size=cfg["size"])
    stats, protocol = channel_stats(ds.x_train), get_protocol(ev["protocol"])
    feats_of = None
    if a.pool or a.prototypes:
        ref = reference_classifier(ds, ReferenceConfig(seed=cfg["seed"]), a.device)
        feats_of = lambda x: F.normalize(embed(ref, x, stats), dim=1)   # noqa: E731
    rows: dict[tuple[str, int], list] = {}

    def score(name: str, k: int, s: SyntheticSet, seed: int) -> None:
        epochs = ev["epochs"].get(str(k)) if isinstance(ev["epochs"], dict) else ev["epochs"]
        r = evaluate_set(s.images, s.labels, ds.x_test, ds.y_test, ds.num_classes, ev["models"][0], protocol,
                         ev["repeats"], epochs, cfg["seed"], a.device, ev["precision"], stats=stats)
        rows.setdefault((name, k), []).append({"seed": seed, "mean": r.mean, "runs": r.runs})
        print(f"{name:<22} IPC {k:>3} seed {seed}: {100 * r.mean:.2f}", flush=True)

    t0 = time.time()
    for seed in seeds:
        n = max(ipcs) * max(1, a.pool)
        full, _ = sample_checkpoint(SampleConfig(**sample, ckpt=ckpt, out="-", ipc=n, seed=seed, device=a.device))
        for k in ipcs:
            score("generated", k, prefix(full, k), seed)
            score("random real", k, select(ds, "random", k, seed, a.device), seed)
            if a.pool:
                pool = prefix(full, k * a.pool)
                score(f"pool {a.pool}x, herding", k, keep_by(pool, k, feats_of(pool.images), seed), seed)
                score(f"pool {a.pool}x, random", k, keep_by(pool, k, None, seed), seed)
            if a.prototypes:
                protos = real_medoids(ds, k, feats_of, seed)
                score("real medoids", k, protos, seed)
                score(f"medoids -> sigma {a.prototypes:g}", k,
                      from_prototypes(ckpt, protos, a.prototypes, sample, seed, a.device), seed)
    out = {"run": str(run), "sample": sample, "checkpoint": ckpt, "seeds": seeds, "time_s": round(time.time() - t0),
           "rows": [{"method": m, "ipc": k, "mean": statistics.fmean(r["mean"] for r in rs),
                     "std_over_seeds": statistics.pstdev(r["mean"] for r in rs), "per_seed": rs}
                    for (m, k), rs in rows.items()]}
    write_json(a.out, out)
    for r in out["rows"]:
        print(f"{r['method']:<22} IPC {r['ipc']:>3}: {100 * r['mean']:.2f} +- {100 * r['std_over_seeds']:.2f} "
              f"over {len(seeds)} seeds")


if __name__ == "__main__":
    main()
