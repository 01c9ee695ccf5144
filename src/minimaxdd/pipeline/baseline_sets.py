"""The `baselines` stage of `distill`: random, herding, k-center (and DM if asked) at each IPC, item by item
(an item present on disk is complete, so an interrupted stage resumes where it stopped)."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from minimaxdd.baselines.distribution_matching import DMConfig
from minimaxdd.baselines.registry import select
from minimaxdd.data.sources import load_dataset
from minimaxdd.data.synthetic import write_synthetic
from minimaxdd.files import manifest
from minimaxdd.pipeline.bookkeeping import StageRun, key_of, say
from minimaxdd.pipeline.config import DistillConfig
from minimaxdd.settings import to_dict


def stage_baselines(run: Path, cfg: DistillConfig, force: bool, device: torch.device) -> dict:
    """Each baseline at each IPC, item by item (an item present on disk is complete)."""
    ev = cfg.evaluate
    conf = {"baselines": ev.baselines, "dm": to_dict(ev.dm), "ipc": cfg.ipc}
    st = StageRun(run, "baselines", key_of(conf, cfg.data, cfg.size, cfg.seed), conf, force)

    def body(st: StageRun) -> dict:
        ds = load_dataset(cfg.data, size=cfg.size)
        sets = {}
        for method in ev.baselines:
            for k in cfg.ipc:
                out = st.dir / f"{method}-ipc{k}"
                if not (out / "data.pt").exists():   # items written atomically: present means complete
                    say(f"baselines: {method} at IPC {k}")
                    t0 = time.time()
                    s = select(ds, method, k, cfg.seed, device, dm=DMConfig(**to_dict(ev.dm)),
                               state_path=st.dir / f"{method}-ipc{k}.dm-state.pt")
                    write_synthetic(out, s, manifest(conf, cfg.seed, time.time() - t0, method=method, ipc=k),
                                    overwrite=True)
                sets[f"{method}:{k}"] = str(out)
        return st.finish(device, sets=sets)

    return st.run(device, body)
