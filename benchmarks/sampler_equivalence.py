"""Every sampler path on tiny random models, written to a file, so that two checkouts can be compared byte for byte.

Run `write` under each checkout (the script uses whichever sampling API the checkout has: the one-family
`minimaxdd.diffusion.sampling` of issue 28, or the two stacks before it), then `compare`:

    git worktree add /tmp/before 5c4e131
    PYTHONPATH=/tmp/before/src python benchmarks/sampler_equivalence.py write /tmp/before.pt
    python benchmarks/sampler_equivalence.py write /tmp/after.pt
    python benchmarks/sampler_equivalence.py compare /tmp/before.pt /tmp/after.pt --out benchmarks/results/sampler-equivalence.json

`compare` reports, per output, whether the two are identical and otherwise the largest difference and the
share of pixels whose uint8 value (the synthetic set's) differs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from minimaxdd.diffusion.networks import build_denoiser


def tiny(learn_sigma: bool) -> torch.nn.Module:
    torch.manual_seed(1)
    m = build_denoiser("dit-n/2", 8, 4, 5, learn_sigma=learn_sigma)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))   # DiT zero-initialises its final layer: make the outputs nontrivial
    return m.eval()


def api() -> tuple:
    """(generate for ddpm models, generate for edm models, denoise_from) of this checkout."""
    try:
        from minimaxdd.diffusion.sampling import denoise_from, generate
        return generate, lambda *a, **k: generate(*a, formulation="edm", **k), denoise_from
    except ImportError:    # before issue 28
        from minimaxdd.diffusion.samplers import generate

        from minimaxdd.diffusion.edm import denoise_from, generate_edm
        return generate, generate_edm, denoise_from


def write(path: Path) -> None:
    generate, generate_edm, denoise_from = api()
    labels, seeds, out = torch.tensor([0, 1, 2, 3, 4, 0, 1]), [11, 12, 13, 14, 15, 16, 17], {}
    for ls in (True, False):
        m = tiny(ls)
        for sampler, steps in [("ddpm", 50), ("ddpm", 10), ("ddim", 10), ("dpm-solver", 10), ("sde-dpm-solver", 10)]:
            for cfg, ch in [(1.0, None), (4.0, 3), (2.0, None)]:
                for clip in (False, True):
                    for spacing in (("time", "logsnr") if sampler.endswith("dpm-solver") else ("time",)):
                        out[f"ddpm model, learn_sigma {ls}, {sampler} {steps}, cfg {cfg} on {ch}, clip {clip}, "
                            f"{spacing}"] = generate(m, labels, seeds, sampler=sampler, steps=steps, cfg_scale=cfg,
                                                     cfg_channels=ch, clip=clip, spacing=spacing, batch_size=3,
                                                     precision="fp32")
        for sampler, steps in [("heun", 18), ("euler", 10), ("dpm-solver", 10)]:
            for cfg in (1.0, 2.0):
                for clip in (False, True):
                    out[f"edm model, learn_sigma {ls}, {sampler} {steps}, cfg {cfg}, clip {clip}"] = generate_edm(
                        m, labels, seeds, sampler=sampler, steps=steps, cfg_scale=cfg, clip=clip, batch_size=3,
                        precision="fp32")
        x0 = torch.rand(7, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
        for sampler in ("heun", "dpm-solver"):
            out[f"edm model from images, learn_sigma {ls}, {sampler}"] = denoise_from(
                m, x0, labels, 1.5, seeds, sampler=sampler, steps=12, cfg_scale=2.0, precision="fp32", batch_size=3)
    torch.save(out, path)
    print(f"{len(out)} outputs -> {path}")


def compare(a_path: Path, b_path: Path, out: Path | None) -> None:
    a, b = torch.load(a_path), torch.load(b_path)
    u8 = lambda x: ((x.clamp(-1, 1) + 1) * 127.5).round()          # noqa: E731  (a pixel codec's decode)
    rows = []
    for k in a:
        same = torch.equal(a[k], b[k])
        rows.append({"output": k, "identical": same,
                     "max_abs_difference": 0.0 if same else float((a[k] - b[k]).abs().max()),
                     "uint8_differing_share": 0.0 if same else float((u8(a[k]) != u8(b[k])).float().mean())})
    n_same = sum(r["identical"] for r in rows)
    print(f"identical {n_same} of {len(rows)}")
    for r in rows:
        if not r["identical"]:
            print(f"  {r['output']}: max |diff| {r['max_abs_difference']:.2e}, "
                  f"uint8 values differing {100 * r['uint8_differing_share']:.2f}%")
    if out:
        out.write_text(json.dumps({"identical": n_same, "outputs": len(rows), "rows": rows}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("path", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    c.add_argument("--out", type=Path)
    a = ap.parse_args()
    write(a.path) if a.cmd == "write" else compare(a.a, a.b, a.out)


if __name__ == "__main__":
    main()
