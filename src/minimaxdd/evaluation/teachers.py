"""Teachers of the soft-label protocols: a frozen network that labels every augmented batch.

Two are trained by us on the full real training set and cached (`TEACHER_RECIPES`): `reference`, the
~100k-image reference classifier that `dc-soft` / `idc-soft` use, and `full`, a fully trained network with
DD-Ranking's real-data recipe that `rded` uses. A third comes from a file: an ImageNet-pretrained ResNet-18 in
torchvision's state-dict layout (a user's own download), restricted to the subset's classes as RDED does.
Each teacher's TEST accuracy is measured once, after its training (reporting, not selection: nothing is chosen
by it), cached beside it, and recorded in every soft row.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

from minimaxdd.data.dataset import Dataset, channel_stats, normalise
from minimaxdd.data.imagenet import imagenet_indices
from minimaxdd.errors import UserError
from minimaxdd.evaluation.classifiers import build_model
from minimaxdd.evaluation.protocols import PROTOCOLS, EvalProtocol
from minimaxdd.evaluation.reference_classifier import at_size, teacher_classifier
from minimaxdd.evaluation.train_test import accuracy, predict, train_classifier
from minimaxdd.files import cache_dir, read_cache, save_atomic, writing_cache
from minimaxdd.precision import resolve_precision

# DD-Ranking's full-data training of ConvNet-3 on CIFAR-10 (NUS-HPC-AI-Lab/DD-Ranking,
# ddranking/utils/train_and_eval.py REAL_DATA_TRAINING_CONFIG["CIFAR10-ConvNet-3"], the same for -BN and
# CIFAR-100): SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 512, 200 epochs, StepLR(step 100, gamma 0.1).
# The augmentation is ours: `dc`'s DSA (DD-Ranking's real-data augmentation was not carried over).
FULL_TEACHER = EvalProtocol("full-teacher", lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=512,
                            augment="dsa", cutmix_p=0.0, cutmix_beta=1.0, milestones=(0.5,), gamma=0.1, epochs=200)
TEACHER_RECIPES = ("reference", "full")


@dataclass
class Teacher:
    """A frozen network (eval mode, no gradients) and what every soft row records about it."""
    net: nn.Module
    test_accuracy: float          # on the real test set, fraction in [0, 1], measured once after training
    description: str
    recipe: dict = field(default_factory=dict)

    def record(self) -> dict:
        """The fields a soft row carries."""
        return {"teacher": self.description, "teacher_test_accuracy": self.test_accuracy,
                "teacher_recipe": self.recipe}


def get_teacher(protocol: EvalProtocol, ds: Dataset, model: str, device: str | torch.device = "cpu",
                image_size: int | None = None, epochs: int | None = None, precision: str = "auto",
                teacher_file: str | None = None) -> Teacher:
    """The teacher `protocol` names, for a `model` student on `ds` at `image_size`. `epochs` overrides the
    recipe's (say so when quoting); `teacher_file`: a torchvision-layout ResNet-18 instead (ImageNet subsets)."""
    if teacher_file is not None:
        return torchvision_resnet18_teacher(teacher_file, ds, device)
    if protocol.teacher == "reference":
        net = teacher_classifier(ds, model, device, image_size, epochs, precision)
        recipe = {"recipe": "reference", "model": model, "epochs": epochs, "protocol": PROTOCOLS["dc"].to_dict()}
        return _with_accuracy(net, at_size(ds, image_size), recipe, precision, device,
                              f"{model}, reference classifier (~100k images seen) on all {len(ds.x_train)} "
                              "real training images")
    if protocol.teacher == "full":
        return full_teacher(ds, model, device, image_size, epochs, precision)
    raise UserError(f"protocol {protocol.name} names unknown teacher {protocol.teacher!r}; "
                    f"known: {', '.join(TEACHER_RECIPES)}")


def _key(blob: dict) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _test_accuracy(net: nn.Module, ds: Dataset, precision: str, device: torch.device) -> float:
    x = normalise(ds.x_test, *channel_stats(ds.x_train), device)
    return accuracy(predict(net, x, precision), ds.y_test, ds.num_classes)[0]


def _with_accuracy(net: nn.Module, ds: Dataset, recipe: dict, precision: str, device: str | torch.device,
                   description: str) -> Teacher:
    """`net` with its test accuracy, read from the cache (keyed by data and recipe) or measured once."""
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    path = cache_dir() / "teacher" / f"{_key({'data': ds.fingerprint(), **recipe, 'precision': precision})}.json"
    info = read_cache(path, lambda p: json.loads(p.read_text()))
    if info is None:
        info = {"test_accuracy": _test_accuracy(net, ds, precision, device)}
        with writing_cache(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(info))
    return Teacher(net.eval().requires_grad_(False), float(info["test_accuracy"]), description, recipe)


def full_teacher(ds: Dataset, model: str, device: str | torch.device = "cpu", image_size: int | None = None,
                 epochs: int | None = None, precision: str = "auto") -> Teacher:
    """A `model` trained on all of ds's training images with FULL_TEACHER (its 200 epochs unless `epochs`),
    cached by data and recipe; its test accuracy measured once after training. The test set selects nothing."""
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    ds = at_size(ds, image_size)
    recipe_p = FULL_TEACHER if epochs is None else replace(FULL_TEACHER, epochs=epochs)
    recipe = {"recipe": "full", "model": model, "protocol": recipe_p.to_dict(), "seed": 0}
    path = cache_dir() / "teacher" / f"{_key({'data': ds.fingerprint(), **recipe, 'precision': precision})}.pt"
    net = build_model(model, ds.channels, ds.num_classes, ds.size)

    def cached(p: Path) -> nn.Module:
        net.load_state_dict(torch.load(p, map_location="cpu", weights_only=True))
        return net

    hit = read_cache(path, cached)
    if hit is None:
        mean, std = channel_stats(ds.x_train)
        hit = train_classifier(normalise(ds.x_train, mean, std, device), ds.y_train.to(device), model,
                               ds.num_classes, recipe_p, recipe_p.epochs, 0, device, precision,
                               desc=f"teacher {model} ({recipe_p.epochs} epochs on all {len(ds.x_train)} images)")
        with writing_cache(path):
            save_atomic(hit.state_dict(), path)
    return _with_accuracy(hit.to(device), ds, recipe, precision, device,
                          f"{model} trained {recipe_p.epochs} epochs on all {len(ds.x_train)} real training images "
                          "(DD-Ranking's real-data recipe)")


# torchvision's ResNet-18 (He et al. 2016) with batch norm, in torchvision's module names, so that its
# state dict (torchvision.models.resnet18().state_dict(), the file RDED's ImageNet teacher loads) loads strictly.
class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + idt)


class TorchvisionResNet18(nn.Module):
    """ResNet-18 in torchvision's layout (conv1, bn1, layer1-4 of two blocks, fc): (N, 3, H, W) -> (N, classes)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (cin, cout) in enumerate(((64, 64), (64, 128), (128, 256), (256, 512)), start=1):
            setattr(self, f"layer{i}", nn.Sequential(_Block(cin, cout, 1 if i == 1 else 2), _Block(cout, cout, 1)))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.maxpool(self.relu(self.bn1(self.conv1(x))))                     # (N, 64, H/4, W/4)
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))               # (N, 512, H/32, W/32)
        return self.fc(self.avgpool(h).flatten(1))                               # (N, classes)


def load_torchvision_resnet18(path: str | Path, class_indices: list[int]) -> nn.Module:
    """A torchvision-layout ResNet-18 state dict (ImageNet-1k, 1000 outputs) restricted to `class_indices`
    (the fc rows of the subset's classes, in its label order, as RDED's load_model prunes the classifier).
    Every key must match: a missing or unexpected one is a UserError naming it."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]                      # RDED's checkpoints wrap the state dict in {"model": ...}
    net = TorchvisionResNet18(1000)
    want, got = set(net.state_dict()), set(sd)
    if want != got:
        raise UserError(f"{path} is not a torchvision ResNet-18 state dict: missing {sorted(want - got)[:5]}, "
                        f"unexpected {sorted(got - want)[:5]}; save torchvision.models.resnet18(weights=...)"
                        ".state_dict()")
    if sd["fc.weight"].shape[0] <= max(class_indices):
        raise UserError(f"{path} has {sd['fc.weight'].shape[0]} outputs; the subset needs ImageNet-1k's 1000")
    net.load_state_dict(sd)
    idx = torch.tensor(class_indices)
    fc = nn.Linear(512, len(class_indices))
    fc.weight.data, fc.bias.data = net.fc.weight.data[idx].clone(), net.fc.bias.data[idx].clone()
    net.fc = fc
    return net.eval().requires_grad_(False)


def torchvision_resnet18_teacher(path: str, ds: Dataset, device: str | torch.device = "cpu") -> Teacher:
    """An ImageNet-pretrained ResNet-18 from `path` as the teacher of an ImageNet subset `ds` (its class
    names are WordNet ids), with its test accuracy on ds's test split, measured once and cached. It sees the
    batches as the student does, standardised with ds's own channel statistics (close to, but not exactly,
    the ImageNet constants torchvision's weights were trained with)."""
    if ds.channels != 3:
        raise UserError(f"a torchvision ResNet-18 teacher needs RGB images; {ds.name} has {ds.channels} channel(s)")
    net = load_torchvision_resnet18(path, imagenet_indices(list(ds.class_names))).to(device)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    return _with_accuracy(net, ds, {"recipe": "torchvision-resnet18", "file_sha256": digest}, "fp32", device,
                          f"torchvision-layout ResNet-18 from {path} (ImageNet-1k, fc rows of the subset's classes)")
