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

The same rows come from `distill` itself as its `extras` stage (`--set extras.pool=K`, `--set
extras.prototypes=SIGMA`, pipeline.extras); this script adds their spread over sampling seeds.

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

from minimaxdd.baselines.registry import select
from minimaxdd.data.dataset import channel_stats
from minimaxdd.data.sources import load_dataset
from minimaxdd.data.synthetic import SyntheticSet
from minimaxdd.diffusion.generation import SampleConfig, from_real_images, sample_checkpoint
from minimaxdd.evaluation.protocols import get_protocol
from minimaxdd.evaluation.reference_classifier import ReferenceConfig, embed, reference_classifier
from minimaxdd.evaluation.train_test import evaluate_set
from minimaxdd.files import write_json
from minimaxdd.pipeline.extras import keep_per_class
from minimaxdd.pipeline.sampling import per_class_prefix
from minimaxdd.runtime import flush_denormals


def real_medoids(ds, k: int, seed: int, device: str) -> SyntheticSet:   # noqa: ANN001
    """k real medoids per class of ds's training set in the reference feature space (the `medoids` selection)."""
    return select(ds, "medoids", k, seed, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a distill run directory")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--ipc", default=None, help="comma separated (default: the run's)")
    ap.add_argument("--pool", type=int, default=0, help="K: also the generate-K-x-IPC-keep-IPC rows")
    ap.add_argument("--prototypes", type=float, default=0.0, help="SIGMA: also the start-from-real-prototypes rows")
    ap.add_argument("--extras-only", action="store_true",
                    help="only the --pool / --prototypes rows (the run's own rows at its seed are in its report)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 beside another job on 2 cores)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.extras_only and not (a.pool or a.prototypes):
        ap.error("--extras-only needs --pool K and/or --prototypes SIGMA")
    flush_denormals()
    if a.threads:
        torch.set_num_threads(a.threads)
    run = Path(a.run)
    cfg = json.loads((run / "config.json").read_text())
    chosen = json.loads((run / "choose" / "stage.json").read_text()) if (run / "choose" / "stage.json").exists() else {}
    sample = {**cfg["sample"], **(chosen.get("sample") or {})}
    by_ipc = {int(k): {**cfg["sample"], **v} for k, v in (chosen.get("by_ipc") or {}).items()}  # choose.per_ipc
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
            src = full
            if by_ipc.get(k, sample) != sample:     # this IPC's own choice: sampled on its own, as distill does
                src, _ = sample_checkpoint(SampleConfig(**by_ipc[k], ckpt=ckpt, out="-", ipc=k * max(1, a.pool),
                                                        seed=seed, device=a.device))
            if not a.extras_only:
                score("generated", k, per_class_prefix(src, k), seed)
                score("random real", k, select(ds, "random", k, seed, a.device), seed)
            if a.pool:
                pool = per_class_prefix(src, k * a.pool)
                score(f"pool {a.pool}x, herding", k, keep_per_class(pool, k, feats_of(pool.images), seed), seed)
                score(f"pool {a.pool}x, random", k, keep_per_class(pool, k, None, seed), seed)
            if a.prototypes:
                protos = real_medoids(ds, k, seed, a.device)
                score("real medoids", k, protos, seed)
                denoised = from_real_images(SampleConfig(**sample, ckpt=ckpt, out="-", seed=seed, device=a.device),
                                            protos.images, protos.labels, a.prototypes)
                score(f"medoids -> sigma {a.prototypes:g}", k, SyntheticSet(denoised, protos.labels,
                                                                          protos.class_names), seed)
    out = {"run": str(run), "sample": sample, "sample_by_ipc": by_ipc or None, "checkpoint": ckpt, "seeds": seeds, "time_s": round(time.time() - t0),
           "rows": [{"method": m, "ipc": k, "mean": statistics.fmean(r["mean"] for r in rs),
                     "std_over_seeds": statistics.pstdev(r["mean"] for r in rs), "per_seed": rs}
                    for (m, k), rs in rows.items()]}
    write_json(a.out, out)
    for r in out["rows"]:
        print(f"{r['method']:<22} IPC {r['ipc']:>3}: {100 * r['mean']:.2f} +- {100 * r['std_over_seeds']:.2f} "
              f"over {len(seeds)} seeds")


if __name__ == "__main__":
    main()
