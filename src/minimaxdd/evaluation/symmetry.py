"""Whether a dataset's labels survive a mirror: the measurement behind `flip: auto`.

Horizontal flips double a small training set only where a mirrored image keeps its label: a mirrored shirt is
a shirt, a mirrored 3 is not a 3. `mirror_test` measures it on the training data alone. A ConvNet-3 trained
without mirrors (DSA without its flip op) on a stratified part of the training set is tested on the held-out
rest, as it is and mirrored. A label-preserving mirror costs a classifier that never saw one little; a
label-changing one costs much. Flips are used when the mirrored images keep at least MIRROR_KEEP of the
classifier's accuracy above chance. Quarter turns are measured too and reported; they are not decided here,
because the only augmentation that turns images (the non-leaking one, `diffusion.augment`) tells the network
which turn it applied and samples at none, so turned images never reach a generated set under their label.

The test images are never read. Results are cached per dataset and settings, like the reference classifier.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time

import torch

from minimaxdd.data.dataset import Dataset, channel_stats, normalise, stratified_split, validation_split
from minimaxdd.evaluation.protocols import PROTOCOLS
from minimaxdd.evaluation.train_test import accuracy, predict, resize_images, train_classifier
from minimaxdd.files import cache_dir, read_cache, write_json, writing_cache
from minimaxdd.precision import resolve_precision

# Ours: flips on when mirrored held-out images keep at least this share of what the classifier knows beyond
# chance, (mirrored - chance) / (plain - chance). Measured (BENCHMARKS.md, "Flips decided from the data"):
# the CIFAR-10 pool keeps 1.00, Fashion-MNIST 0.73 (its shoes and bags all face one way, so mirrored ones are
# unusual but keep their label), digits 0.25 (a mirrored 3 is no digit). The midpoint, set after measuring
# those three on their training data.
MIRROR_KEEP = 0.5
# Below this accuracy above chance the classifier has learned too little to tell; flips stay on, as before.
MIN_ABOVE_CHANCE = 0.05
VAL_FRACTION = 0.1          # of each class held out, as the choose stage holds out its validation split
# The cost, bounded for any dataset (ours; about a minute on 2 CPU cores, BENCHMARKS.md): at most this many
# training images (a stratified subset), resized down to this side (a mirror shows at 16 px as at 32), and
# about this many images seen in training (1 to 50 epochs).
MAX_TRAIN_IMAGES = 5_000
MAX_SIDE = 16
IMAGES_SEEN = 20_000


@dataclasses.dataclass(frozen=True)
class MirrorTest:
    accuracy: float             # held-out accuracy, images as they are
    mirrored_accuracy: float    # the same images mirrored left-right
    turned_accuracy: float      # the same images turned a quarter (reported only)
    chance: float               # the largest class's share of the held-out images
    keep: float | None          # (mirrored - chance) / (plain - chance); None: too little learned to tell
    flip: bool                  # keep >= threshold (or the classifier learned too little to tell)
    threshold: float
    train_images: int
    val_images: int
    epochs: int
    side: int
    time_s: float
    cached: bool = False

    def describe(self) -> str:
        """'flips on (mirrored held-out accuracy 80.1% against 82.0%, chance 10.0%: 0.97 kept; on at >= 0.50)'."""
        kept = ("too little learned to tell, so on as by default" if self.keep is None else
                f"{self.keep:.2f} kept; on at >= {self.threshold:.2f}")
        return (f"flips {'on' if self.flip else 'off'} (mirrored held-out accuracy {100 * self.mirrored_accuracy:.1f}% "
                f"against {100 * self.accuracy:.1f}%, chance {100 * self.chance:.1f}%: {kept})")


def _key(ds: Dataset, seed: int, precision: str) -> str:
    blob = json.dumps({"data": ds.fingerprint(), "seed": seed, "precision": precision, "keep": MIRROR_KEEP,
                       "val": VAL_FRACTION, "max": MAX_TRAIN_IMAGES, "side": MAX_SIDE, "seen": IMAGES_SEEN,
                       "protocol": PROTOCOLS["dc"].to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def mirror_test(ds: Dataset, seed: int = 0, device: str | torch.device = "cpu", precision: str = "auto",
                use_cache: bool = True) -> MirrorTest:
    """Train a mirror-free ConvNet-3 on part of ds's training set and test it on the rest, plain, mirrored and
    turned; cached by data and settings. The test split is never read."""
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    path = cache_dir() / "symmetry" / f"{_key(ds, seed, precision)}.json"
    hit = read_cache(path, lambda p: MirrorTest(**{**json.loads(p.read_text()), "cached": True})) if use_cache else None
    if hit is not None:
        return hit
    t0 = time.time()
    train_idx, val_idx = validation_split(ds, VAL_FRACTION, seed)
    if len(train_idx) > MAX_TRAIN_IMAGES:     # the same share of each class
        train_idx = train_idx[stratified_split(ds.y_train[train_idx], MAX_TRAIN_IMAGES / len(train_idx), seed,
                                               ds.num_classes)[1]]
    side = min(ds.size, MAX_SIDE)
    x = resize_images(ds.x_train, side)
    stats = channel_stats(x[train_idx])
    epochs = max(1, min(50, round(IMAGES_SEEN / len(train_idx))))
    protocol = dataclasses.replace(PROTOCOLS["dc"], augment="dsa_noflip")
    model = train_classifier(normalise(x[train_idx], *stats, device), ds.y_train[train_idx].to(device), "convnet3",
                             ds.num_classes, protocol, epochs, seed, device, precision,
                             desc=f"mirror test ({epochs} epochs on {len(train_idx)} training images)")
    val, y = x[val_idx], ds.y_train[val_idx]
    acc = {name: accuracy(predict(model, normalise(v, *stats, device), precision), y, ds.num_classes)[0]
           for name, v in (("plain", val), ("mirrored", val.flip(-1)), ("turned", val.rot90(1, (-2, -1))))}
    chance = float(torch.bincount(y).max()) / len(y)
    learned = acc["plain"] - chance
    keep = (acc["mirrored"] - chance) / learned if learned >= MIN_ABOVE_CHANCE else None
    out = MirrorTest(accuracy=acc["plain"], mirrored_accuracy=acc["mirrored"], turned_accuracy=acc["turned"],
                     chance=chance, keep=keep, flip=keep is None or keep >= MIRROR_KEEP, threshold=MIRROR_KEEP,
                     train_images=len(train_idx),
                     val_images=len(val_idx), epochs=epochs, side=side, time_s=round(time.time() - t0, 2))
    if use_cache:
        with writing_cache(path):
            write_json(path, {k: v for k, v in dataclasses.asdict(out).items() if k != "cached"})
    return out
