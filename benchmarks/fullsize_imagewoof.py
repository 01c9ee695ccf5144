"""The `imagewoof` preset end to end at real sizes on a CPU, on stand-in files in the official formats (issue 19).

Builds once, in --work:
  DiT-XL-2-256x256.pt     a state dict with the 292 keys and shapes of the official release
                          (tests/fixtures/dit_xl2_256_keys.json), random weights
  sd-vae-ft-ema/          an AutoencoderKL with Stable Diffusion's VAE config, random weights, saved by diffusers
  imagenet/{train,val}/<wnid>/*.JPEG
                          the 10 ImageWoof WordNet ids, a few random JPEGs of ImageNet-like sizes each
then runs `distill --preset imagewoof` on them with tiny settings (IPC 2, 4 fine-tuning steps, 4 sampling
steps, 2 evaluation epochs, 1 repeat, a full-data row of 1 epoch, the soft-label protocol beside idc with a
2-epoch teacher) through every stage, metrics included. Each stage runs in a child process of its own (the
stages before it are skipped from their records), so its peak memory is its own: the child's maximal RSS,
imports included (about 0.5 GB of torch and diffusers). Written to --out: per stage the wall time and peak
memory, the sizes of the base and fine-tuned checkpoints, the result rows, the command and the machine.
The run directory and caches (--work/run, --work/cache) are removed first, so every stage does its work.

--tiny: the same pipeline with a DiT of the official layout but 128 wide and 2 deep, a 4-level VAE 8-16
wide and 64 px images (about 7 minutes on 2 busy cores, most of it the 27 evaluation rows; the test
tests/benchmarks/test_fullsize_imagewoof.py runs it with one classifier and the random baseline only).

    python benchmarks/fullsize_imagewoof.py --out benchmarks/results/fullsize-imagewoof.json
    python benchmarks/fullsize_imagewoof.py --tiny --work /tmp/woof-tiny --out /tmp/woof-tiny.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from minimaxdd.data.imagenet import IMAGEWOOF
from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.diffusion.networks import build_from_config
from minimaxdd.files import write_json
from minimaxdd.pipeline.bookkeeping import STAGES
from minimaxdd.pipeline.config import build_config, load_distill_preset, merge, parse_set, resolve_precisions
from minimaxdd.pipeline.distill import stage_steps

ROOT = Path(__file__).resolve().parents[1]
KEYS = ROOT / "tests" / "fixtures" / "dit_xl2_256_keys.json"
# Stable Diffusion's VAE (stabilityai/sd-vae-ft-ema config.json): 4 levels 128-512 wide, 2 layers per level,
# 4 latent channels, 8x down-sampling; the scaling factor (0.18215) is diffusers' AutoencoderKL default.
SD_VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [128, 256, 512, 512],
          "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
          "layers_per_block": 2, "norm_num_groups": 32, "act_fn": "silu", "sample_size": 256}
TINY_VAE = {**SD_VAE, "block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 8,
            "sample_size": 64}
# DiT-XL/2 (Peebles & Xie 2023): 1152 wide, 28 deep, 16 heads, patch 2, 32x32x4 latents, 1000 classes, learned
# sigma. The tiny one keeps the layout (and a width the loader knows the head count of: dit-n's 128, 4 heads).
DIT_XL = {"arch": "dit", "input_size": 32, "patch_size": 2, "in_channels": 4, "hidden_size": 1152, "depth": 28,
          "num_heads": 16, "mlp_ratio": 4.0, "num_classes": 1000, "learn_sigma": True, "difffit": "none"}
TINY_DIT = {**DIT_XL, "input_size": 8, "hidden_size": 128, "depth": 2, "num_heads": 4}


# ---------------------------------------------------------------------------------------------
# the stand-in files


def make_dit(path: Path, cfg: dict, check_keys: bool) -> None:
    """A DiT state dict in the official layout (no Difffit gammas), random weights but the fixed sin-cos table."""
    torch.manual_seed(0)
    model = build_from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0, 0.02)
    state = model.state_dict()
    if check_keys:
        want = {k: s for k, s in json.loads(KEYS.read_text())["keys"]}
        assert {k: list(v.shape) for k, v in state.items()} == want, "not the official DiT-XL/2 key list"
    torch.save(state, path)


def make_vae(folder: Path, cfg: dict) -> None:
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    AutoencoderKL(**cfg).save_pretrained(str(folder))     # config.json + diffusion_pytorch_model.safetensors


def make_imagenet(root: Path, sizes: list[tuple[int, int]], train: int, val: int) -> None:
    """root/{train,val}/<wnid>/<wnid>_<i>.JPEG: smooth random colour fields of ImageNet-like sizes."""
    g = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for wnid in IMAGEWOOF:
            d = root / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = sizes[(i + len(d.name)) % len(sizes)]
                coarse = g.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
                img = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
                img.save(d / f"{wnid}_{i}.JPEG", quality=90)


def build_files(work: Path, tiny: bool, per_class: int) -> dict:
    """The three stand-ins (kept between runs); returns their paths and sizes."""
    work.mkdir(parents=True, exist_ok=True)
    dit, vae, data = work / "DiT-XL-2-256x256.pt", work / "sd-vae-ft-ema", work / "imagenet"
    if not dit.exists():
        make_dit(dit, TINY_DIT if tiny else DIT_XL, check_keys=not tiny)
    if not (vae / "config.json").exists():
        make_vae(vae, TINY_VAE if tiny else SD_VAE)
    if not (data / "train").exists():
        make_imagenet(data, [(80, 72), (72, 96)] if tiny else [(500, 375), (375, 500), (500, 333)], per_class, 2)
    return {"dit": str(dit), "dit_mb": round(dit.stat().st_size / 2**20, 1), "vae": str(vae),
            "vae_mb": round(sum(f.stat().st_size for f in vae.iterdir()) / 2**20, 1), "data": str(data),
            "train_per_class": per_class, "val_per_class": 2}


def distill_config(files: dict, tiny: bool, extra: dict) -> dict:
    """The imagewoof preset with the tiny settings of issue 19 (and 64 px images with --tiny), then `extra`."""
    over = {"data": f"imagewoof:{files['data']}", "ipc": [2], "device": "cpu",
            "base": {"pretrained": files["dit"], "codec": f"vae:{files['vae']}"},
            "finetune": {"steps": 4},
            "sample": {"steps": 4},
            "evaluate": {"epochs": 2, "repeats": 1, "full_epochs": 1, "soft_labels": True, "teacher_epochs": 2}}
    if tiny:
        over["size"] = 64
    return build_config(load_distill_preset("imagewoof"), merge(over, extra)).to_dict()


# ---------------------------------------------------------------------------------------------
# one stage per child process


def child(stage: str, config: Path, run: Path) -> None:
    """Run the stages up to `stage` (the earlier ones are done and skip), timing `stage`; write its record."""
    dev = torch.device("cpu")
    cfg = resolve_precisions(build_config(None, json.loads(config.read_text())), dev)
    run.mkdir(parents=True, exist_ok=True)
    write_json(run / "config.json", {**cfg.to_dict(), "device": str(dev)})
    done: dict = {}
    for name, fn in stage_steps(run, cfg, dev).items():
        if name == stage:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            t0 = time.time()
            fn(done)
            rec = {"stage": stage, "time_s": round(time.time() - t0, 2), "rss_before_mb": round(before, 1),
                   "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
            write_json(run / "bench" / f"{stage}.json", rec)
            return
        done[name] = fn(done)


def run_stages(work: Path, config: dict, env: dict) -> list[dict]:
    run, cfg_file = work / "run", work / "config.json"
    write_json(cfg_file, config)
    out = []
    for stage in STAGES:
        t0 = time.time()
        p = subprocess.run([sys.executable, __file__, "--child", stage, "--config", str(cfg_file), "--run", str(run)],
                           env=env, capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(f"stage {stage} failed:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
        rec = json.loads((run / "bench" / f"{stage}.json").read_text())
        out.append({**rec, "process_s": round(time.time() - t0, 2)})
        print(f"{stage:<10} {rec['time_s']:>9.1f} s  peak RSS {rec['peak_rss_mb']:>8.0f} MB", flush=True)
    return out


def summary(work: Path, files: dict, stages: list[dict], tiny: bool, wall: float) -> dict:
    run = work / "run"
    ft = ckpt.resolve(run / "finetune")
    meta = ckpt.read_meta(ft)
    rows = json.loads((run / "results.json").read_text())
    return {"command": " ".join(sys.argv), "mode": "tiny" if tiny else "full size", "machine": {
                "platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                "threads": torch.get_num_threads()},
            "files": files, "wall_s": round(wall, 1), "stages": stages,
            "finetuned_checkpoint": {"path": str(ft), "mb": round(ft.stat().st_size / 2**20, 2),
                                     "trained_tensors": len(meta.base["trained"]) if meta.base else None,
                                     "base_mb": round(meta.base["size"] / 2**20, 1) if meta.base else None},
            "results": [{k: r[k] for k in ("method", "ipc", "model", "protocol", "mean", "std", "epochs")}
                        for r in rows]}


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=None, help="where the stand-ins, caches and the run go "
                                                 "(default runs/fullsize-imagewoof[-tiny])")
    ap.add_argument("--out", default=None, help="the JSON of times and memory (default WORK/fullsize.json)")
    ap.add_argument("--tiny", action="store_true", help="small model, small images: minutes, for tests")
    ap.add_argument("--per-class", type=int, default=4, help="training JPEGs per class (2 val each)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override the distill config further, as `distill --set` does")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--config", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--run", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child, Path(a.config), Path(a.run))
        return None
    work = Path(a.work or f"runs/fullsize-imagewoof{'-tiny' if a.tiny else ''}")
    t0 = time.time()
    files = build_files(work, a.tiny, a.per_class)
    print(f"stand-ins ready in {work} ({time.time() - t0:.0f} s): DiT {files['dit_mb']} MB, VAE {files['vae_mb']} MB",
          flush=True)
    for d in ("run", "cache"):
        shutil.rmtree(work / d, ignore_errors=True)
    env = {**os.environ, "MINIMAXDD_CACHE": str((work / "cache").resolve()), "MINIMAXDD_QUIET": "1"}
    t1 = time.time()
    stages = run_stages(work, distill_config(files, a.tiny, parse_set(a.set)), env)
    res = summary(work, files, stages, a.tiny, time.time() - t1)
    out = Path(a.out or work / "fullsize.json")
    write_json(out, res)
    print(f"wrote {out}; fine-tuned checkpoint {res['finetuned_checkpoint']['mb']} MB "
          f"(base {res['finetuned_checkpoint']['base_mb']} MB)")
    return res


if __name__ == "__main__":
    main()
