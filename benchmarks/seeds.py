"""Seed spread of a distill run's generated set, beside random real images, over several seeds.

The distill pipeline samples one set (the config's seed) and evaluates it with its classifier repeats. This
script runs the pipeline's own `sample`, `baselines`, `extras` and `evaluate` stages again from the run's
fine-tuned model and its `choose` record, once per seed, exactly as `minimaxdd sweep --seeds` / `ablation
--seeds` do (`pipeline.ablation.seed_dirs` and `combine_seeds`): a seed s is the config with `seed` s, so it
sets the sampling noise, the random selection and the classifier seeds (s, s+1, ... over the repeats), and
the epochs, precision and protocol are the run's. One measurement, one code path, one number.

Optional rows, each reported on its own (pipeline.extras, the `extras` stage):

  --pool K   "generate many, keep few": K x IPC samples per class, IPC kept by herding in the reference
             classifier's feature space; its control keeps IPC of the same pool at random.
  --prototypes SIGMA
             "start from real prototypes" (as D4M / SDEdit): IPC real class medoids noised to SIGMA and
             denoised by the EDM model; its control is the medoids themselves.

    python benchmarks/seeds.py runs/fm-unet --seeds 0,1,2 --ipc 10,50 --pool 5 --out runs/fm-unet/seeds.json

Everything is written under --work (default RUN/seeds/; the config's own seed in it, seed s in seed-s/), never
into the run itself; a rerun skips what is done. Per row: the mean and population std over seeds of each
seed's mean accuracy, and every seed's row. The test set is read only to report; nothing here chooses anything.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from minimaxdd.files import write_json
from minimaxdd.pipeline.ablation import combine_seeds, seed_dirs
from minimaxdd.pipeline.baseline_sets import stage_baselines
from minimaxdd.pipeline.config import DistillConfig, build_config, resolve_precisions
from minimaxdd.pipeline.evaluation import stage_evaluate
from minimaxdd.pipeline.extras import stage_extras
from minimaxdd.pipeline.sampling import stage_sample
from minimaxdd.runtime import flush_denormals, keep_freed_memory, pick_device


def seeds_config(run: Path, ipcs: list[int] | None, pool: int, prototypes: float | None,
                 device: str, random: bool = True, controls: list[str] | None = None) -> DistillConfig:
    """The run's config as given (RUN/config.json), resolved on this machine as distill resolves it, with the
    rows this script measures: the run's first classifier and protocol, random real (unless not `random`) and the
    `controls` (other baselines, e.g. `medoids`, the real images mode guidance pulls to) as the baselines, no
    full-data row, no metrics, and the asked optional rows."""
    given = json.loads((run / "config.json").read_text())
    given.pop("precision_used", None)
    cfg = build_config(None, given)
    baselines = (["random"] if random else []) + list(controls or [])
    ev = dataclasses.replace(cfg.evaluate, models=cfg.evaluate.models[:1], baselines=baselines, full_epochs=0,
                             metrics=False, soft_labels=False)
    cfg = dataclasses.replace(cfg, ipc=ipcs or cfg.ipc, evaluate=ev,
                              extras=dataclasses.replace(cfg.extras, pool=pool, prototypes=prototypes))
    dev = pick_device(device)
    return resolve_precisions(dataclasses.replace(cfg, device=str(dev)), dev)


def stage_record(run: Path, stage: str) -> dict:
    f = run / stage / "stage.json"
    rec = json.loads(f.read_text()) if f.exists() else {}
    if stage == "finetune" and not rec.get("done"):
        raise SystemExit(f"{run} has no finished finetune stage ({f}); run distill to the end first")
    return rec


def one_seed(d: Path, c: DistillConfig, ft: dict, chosen: dict, extras_only: bool) -> list[dict]:
    """The rows of one seed, by the distill stages in folder d (each skipped when done)."""
    dev = torch.device(c.device)
    d.mkdir(parents=True, exist_ok=True)
    pick, by_ipc = chosen.get("sample"), chosen.get("by_ipc")
    sample = None if extras_only else stage_sample(d, c, ft, False, dev, pick, by_ipc)
    baselines = None if extras_only else stage_baselines(d, c, False, dev)
    extras = stage_extras(d, c, ft, pick, False, dev, by_ipc)
    return stage_evaluate(d, c, sample, baselines, False, dev, full=False, write_results=False, extras=extras,
                          set_aside_stale=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a distill run directory")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--ipc", default=None, help="comma separated (default: the run's)")
    ap.add_argument("--pool", type=int, default=0, help="K: also the generate-K-x-IPC-keep-IPC rows")
    ap.add_argument("--prototypes", type=float, default=None, help="SIGMA: also the start-from-real-prototypes rows")
    ap.add_argument("--extras-only", action="store_true",
                    help="only the --pool / --prototypes rows (the run's own rows at its seed are in its report)")
    ap.add_argument("--no-random", action="store_true",
                    help="leave out the random-real rows (already measured at these seeds, e.g. by another run)")
    ap.add_argument("--controls", default="", help="comma separated baselines also measured at every seed "
                    "(e.g. medoids, the mode-guided row's sibling of real images; herding, kcenter). At a seed s "
                    "other than 0 their features come from a reference classifier trained with seed s; mode "
                    "guidance clusters in seed 0's at every seed")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 beside another job on 2 cores)")
    ap.add_argument("--work", default=None, help="where the seeds' stages write (default RUN/seeds)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.extras_only and not (a.pool or a.prototypes):
        ap.error("--extras-only needs --pool K and/or --prototypes SIGMA")
    flush_denormals()
    keep_freed_memory()     # as the command line does
    if a.threads:
        torch.set_num_threads(a.threads)
    run = Path(a.run)
    work = Path(a.work) if a.work else run / "seeds"
    seeds = [int(s) for s in a.seeds.split(",")]
    cfg = seeds_config(run, [int(k) for k in a.ipc.split(",")] if a.ipc else None, a.pool, a.prototypes, a.device,
                       not a.no_random, [b for b in a.controls.split(",") if b])
    ft, chosen = stage_record(run, "finetune"), stage_record(run, "choose")
    t0 = time.time()
    per_seed = [(c.seed, one_seed(d, c, ft, chosen, a.extras_only)) for d, c in seed_dirs(work, cfg, seeds)]
    rows = combine_seeds(per_seed)
    write_json(a.out, {"run": str(run), "work": str(work), "seeds": seeds, "checkpoint": ft["checkpoint"],
                       "chosen": chosen.get("sample"), "chosen_by_ipc": chosen.get("by_ipc"),
                       "config": cfg.to_dict(), "time_s": round(time.time() - t0), "rows": rows})
    over = f"over {len(seeds)} seeds" if len(seeds) > 1 else f"over {cfg.evaluate.repeats} classifier repeats"
    for r in sorted(rows, key=lambda r: (r["ipc"], r["method"])):
        print(f"{r['method']:<26} IPC {r['ipc']:>3}: {100 * r['mean']:.2f} +- {100 * r['std']:.2f} {over}")


if __name__ == "__main__":
    main()
