"""The control of mode-guided sampling: the k-means modes themselves as the distilled set.

Mode guidance pulls each sample towards one k-means mode of its class's real training images (pixel space for
pixel models, `diffusion.generation.real_modes`); at strength 1 the denoiser's output *is* the mode while sigma is
above the stop level, so the diffusion model only refines the mode below it. This writes the same modes as a
synthetic set (.npz, uint8), one file per IPC, for `minimaxdd evaluate`: what the model adds is the difference.
Same data (all training images), same seed, same order (largest cluster first) and, as the sampler, k = IPC for
each IPC: IPC 10's modes are a 10-way clustering of their own, not the first 10 of IPC 50's.

--space features clusters in the reference classifier's features (the cached one `distill` and herding use) and
writes each cluster's pixel mean: the control of `sample.mode_space=features`. --target medoid writes each
cluster's member nearest its centre instead (real images): the control of `sample.mode_target=medoid`.

    python benchmarks/mode_control.py --data fashion-mnist --ipc 10,50 --seed 0 --out runs/modes
    minimaxdd evaluate runs/modes/modes-seed0-ipc10.npz --real fashion-mnist --epochs 300 --seed 0
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from minimaxdd.data.sources import load_dataset
from minimaxdd.diffusion.codecs import PixelCodec
from minimaxdd.diffusion.generation import MODE_SPACES, MODE_TARGETS, modes_name
from minimaxdd.diffusion.guides import class_modes
from minimaxdd.evaluation.reference_classifier import reference_features
from minimaxdd.runtime import pick_device


def mode_sets(x_train: torch.Tensor, y_train: torch.Tensor, n_classes: int, ipcs: list[int], seed: int,
              feats: torch.Tensor | None = None, medoid: bool = False) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{ipc: (uint8 images (n_classes * ipc, C, H, W), labels)}: each class's k = ipc modes of its uint8 training
    images in the pixel codec's [-1, 1], as the sampler computes them (`feats` (N, D): clustered in those features,
    each mode its cluster's pixel mean; `medoid`: each mode its cluster's member nearest the centre)."""
    codec = PixelCodec(x_train.shape[1], x_train.shape[-1])                # the sampler's pixel space, [-1, 1]
    x = codec.encode(x_train)
    classes = list(range(n_classes))
    out = {}
    for ipc in sorted(ipcs):
        modes = class_modes(x, y_train, classes, ipc, seed, feats, medoid)  # {class: (ipc, C, H, W)}
        u8 = codec.decode(torch.cat([modes[c] for c in classes])).numpy()
        out[ipc] = (u8, np.repeat(np.arange(n_classes), ipc))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--ipc", default="10,50")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--space", choices=MODE_SPACES, default="model",
                    help="cluster in the model's space (pixels) or the reference classifier's features")
    ap.add_argument("--target", choices=MODE_TARGETS, default="centre",
                    help="each mode its cluster's centre (mean), or the member image nearest it")
    ap.add_argument("--device", default="cpu", help="for the reference classifier (--space features)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    ds = load_dataset(a.data)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    feats = reference_features(ds, pick_device(a.device)).cpu() if a.space == "features" else None
    stem = modes_name(a.space, a.target)
    for ipc, (u8, labels) in mode_sets(ds.x_train, ds.y_train, len(ds.class_names),
                                       [int(i) for i in a.ipc.split(",")], a.seed, feats,
                                       a.target == "medoid").items():
        f = out / f"{stem}-seed{a.seed}-ipc{ipc}.npz"
        np.savez(f, images=u8, labels=labels, class_names=np.array(ds.class_names))
        print(f"wrote {f}: {u8.shape}")


if __name__ == "__main__":
    main()
