"""The reference classifier: a network trained once on the full real training set and cached.

Herding and k-center select in its feature space; the diagnostics (MMD, FID-like distances)
and the "generation accuracy" of a diffusion model use it too. It is never selected with
the test set: its schedule is fixed in advance.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

from minimaxdd.data.dataset import Dataset, channel_stats, normalise
from minimaxdd.evaluation.classifiers import build_model
from minimaxdd.evaluation.protocols import PROTOCOLS
from minimaxdd.evaluation.train_test import accuracy, predict, resize_images, train_classifier
from minimaxdd.files import cache_dir, read_cache, save_atomic, writing_cache
from minimaxdd.precision import resolve_precision
from minimaxdd.runtime import progress

# Ours: a fixed budget of ~100k training images seen (20 epochs of a 5k-image pool, 2 of Fashion-MNIST),
# clipped to 1..50 epochs: enough for useful features on a 2-core CPU; override with --feature-epochs.
REFERENCE_IMAGES_SEEN = 100_000


@dataclass(frozen=True)
class ReferenceConfig:
    model: str = "convnet3"
    epochs: int | None = None  # None: about 100k training images seen, 1 to 50 epochs
    seed: int = 0
    precision: str = "auto"    # resolved before keying the cache: a classifier trained in bf16 is not an fp32 one

    def epochs_for(self, n: int) -> int:
        """Epochs over a training set of n images: `epochs` if given, else about REFERENCE_IMAGES_SEEN / n."""
        return self.epochs if self.epochs is not None else max(1, min(50, round(REFERENCE_IMAGES_SEEN / n)))


def _key(ds: Dataset, cfg: ReferenceConfig) -> str:
    blob = json.dumps({"data": ds.fingerprint(), **asdict(cfg), "epochs": cfg.epochs_for(len(ds.x_train)),
                       "protocol": PROTOCOLS["dc"].to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def reference_classifier(ds: Dataset, cfg: ReferenceConfig = ReferenceConfig(), device: str | torch.device = "cpu",
                         use_cache: bool = True) -> nn.Module:
    """A `cfg.model` trained on all of ds's training images with the `dc` protocol's optimiser
    and DSA, loaded from the cache when the same data and config were trained before. The test
    images are never read."""
    device = torch.device(device)
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, device))
    path = cache_dir() / "reference" / f"{_key(ds, cfg)}.pt"
    model = build_model(cfg.model, ds.channels, ds.num_classes, ds.size)

    def cached(p: Path) -> nn.Module:     # into a copy: a file that fails half-way leaves `model` as it was
        loaded = copy.deepcopy(model)
        loaded.load_state_dict(torch.load(p, map_location="cpu", weights_only=True))
        return loaded

    hit = read_cache(path, cached) if use_cache else None
    if hit is not None:
        return hit.to(device).eval()
    mean, std = channel_stats(ds.x_train)
    epochs = cfg.epochs_for(len(ds.x_train))
    model = train_classifier(normalise(ds.x_train, mean, std, device), ds.y_train.to(device), cfg.model,
                             ds.num_classes, PROTOCOLS["dc"], epochs, cfg.seed, device, cfg.precision,
                             desc=f"reference {cfg.model} ({epochs} epochs on all {len(ds.x_train)} images)")
    if use_cache:
        with writing_cache(path):
            save_atomic(model.state_dict(), path)
    return model


def at_size(ds: Dataset, size: int | None) -> Dataset:
    """`ds` with both splits resized to `size` x `size` (antialiased); `ds` itself when size is None or its own."""
    if size is None or size == ds.size:
        return ds
    return Dataset(f"{ds.name}@{size}px", resize_images(ds.x_train, size), ds.y_train,
                   resize_images(ds.x_test, size), ds.y_test, list(ds.class_names))


def teacher_classifier(ds: Dataset, model: str, device: str | torch.device = "cpu", image_size: int | None = None,
                       epochs: int | None = None, precision: str = "auto") -> nn.Module:
    """The teacher of the soft-label protocols: a `model` trained on all of ds's training images (at
    `image_size`, the evaluation's) as the reference classifier is, cached the same way, frozen (eval mode,
    no gradients). Its schedule is fixed in advance; the test set never selects it."""
    net = reference_classifier(at_size(ds, image_size), ReferenceConfig(model=model, epochs=epochs,
                                                                        precision=precision), device)
    return net.eval().requires_grad_(False)


# The last reference_features result of this process: {(cache folder, classifier's key, device): (N, D) rows}.
# Sampling with feature-space modes asks for it once per candidate and IPC; embedding 60k images costs ~90 s
# on 2 cores.
_FEATURES: dict[tuple[str, str, str], torch.Tensor] = {}


def reference_features(ds: Dataset, device: str | torch.device = "cpu", seed: int = 0,
                       epochs: int | None = None) -> torch.Tensor:
    """Unit rows (N, D) of the reference classifier's embedding of ds's training images: the space herding,
    k-center and feature-space mode guidance work in (the classifier trained, or loaded from the cache, first).
    The last result is kept for the process (keyed by the data's fingerprint and the classifier's config): callers
    index it and must not write into it."""
    device = torch.device(device)
    cfg = ReferenceConfig(epochs=epochs, seed=seed)
    key = (str(cache_dir()), _key(ds, replace(cfg, precision=resolve_precision(cfg.precision, device))), str(device))
    if key not in _FEATURES:
        model = reference_classifier(ds, cfg, device)
        feats = torch.nn.functional.normalize(embed(model, ds.x_train, channel_stats(ds.x_train)), dim=1)
        _FEATURES.clear()                 # one entry: a dataset's features can be hundreds of MB
        _FEATURES[key] = feats
    return _FEATURES[key]


@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor],
          batch_size: int = 512) -> torch.Tensor:
    """Embeddings (N, D) in fp32 of uint8 images x (N, C, H, W): the classifier's last feature map pooled to a
    bounded size (`classifiers.EMBED_SIDE`; at most 2048 values for ConvNet-3, whatever the image size)."""
    dev = next(model.parameters()).device
    model.eval()
    out = []
    for i in progress(range(0, len(x), batch_size), desc="features", total=(len(x) + batch_size - 1) // batch_size):
        out.append(model.embedding(normalise(x[i:i + batch_size], *stats, dev)).float().cpu())  # (B, D)
    return torch.cat(out)


def generation_accuracy(ds: Dataset, images: torch.Tensor, labels: torch.Tensor,
                        cfg: ReferenceConfig = ReferenceConfig(), device: str | torch.device = "cpu") -> dict:
    """How often the full-data reference classifier assigns a generated image to the class it was
    conditioned on (overall and per class), next to the same classifier's real test accuracy."""
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, device))
    model = reference_classifier(ds, cfg, device)
    stats = channel_stats(ds.x_train)
    dev = torch.device(device)
    gen, per = accuracy(predict(model, normalise(images, *stats, dev), cfg.precision), labels, ds.num_classes)
    test, _ = accuracy(predict(model, normalise(ds.x_test, *stats, dev), cfg.precision), ds.y_test, ds.num_classes)
    return {"generation_accuracy": gen, "per_class": per, "reference_test_accuracy": test,
            "reference": asdict(cfg), "reference_epochs": cfg.epochs_for(len(ds.x_train))}
