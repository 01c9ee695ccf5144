"""Classifiers of the evaluation protocol: ConvNet-D, ResNetAP-10, ResNet-18, by name in `CLASSIFIERS`
(the keys are the CLI's `--model` choices of `evaluate`).

All use instance norm (GroupNorm with one group per channel, affine), accept any channel
count and square input size, and expose `features(x)` (the input of the last linear layer) and
`embedding(x)` (the same, average-pooled to a bounded size: what herding, k-center and the diagnostics
use) besides `forward(x)` (logits).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimaxdd.errors import UserError

# Ours: `embedding` average-pools a ConvNet's last feature map to at most EMBED_SIDE x EMBED_SIDE, so an
# embedding has at most width * 16 values (2048 for width 128) whatever the image size: ConvNet-3's 4x4 map
# at 32 px is its embedding unchanged, its 32x32 map at 256 px (131,072 values) is pooled 64-fold. Herding,
# k-center and the diagnostics (their covariances) work in this bounded space.
EMBED_SIDE = 4


def instance_norm(channels: int) -> nn.GroupNorm:
    # "instancenorm" of the DC/DSA/DM and IDC code: GroupNorm(C, C, affine=True).
    return nn.GroupNorm(channels, channels, affine=True)


class ConvNet(nn.Module):
    """depth x [conv3x3 (width) -> instance norm -> ReLU -> avgpool 2] -> linear.

    The DC / DSA / DM benchmark network (Zhao et al. 2021; width 128, depth 3 at 32 px) and
    the IDC / Minimax ConvNet-6 at 256 px. As in the DC code, 28x28 single-channel inputs get
    padding 3 on the first conv so the network sees 32x32. A pooling that would hand the next
    conv a 1x1 map is skipped (instance norm of one value is just its bias, so the net would
    ignore its input): deep nets stay trainable on small inputs (digits are 8x8).
    """

    def __init__(self, channels: int, num_classes: int, size: int, depth: int = 3, width: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        pad0 = 3 if (channels == 1 and size == 28) else 1
        s = size + 2 * (pad0 - 1)   # side of the map the first conv outputs
        c = channels
        for d in range(depth):
            conv = nn.Conv2d(c, width, 3, padding=pad0 if d == 0 else 1)
            layers += [conv, instance_norm(width), nn.ReLU(inplace=True)]
            last = d == depth - 1
            if s >= 2 and (last or s // 2 >= 2):
                layers.append(nn.AvgPool2d(2, 2))
                s //= 2
            c = width
        self.body = nn.Sequential(*layers)
        self.feature_dim = width * s * s
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The flattened last feature map: (N, C, H, W) -> (N, feature_dim)."""
        return self.body(x).flatten(1)  # (N, width * s * s)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map average-pooled to at most EMBED_SIDE x EMBED_SIDE: (N, C, H, W) -> (N, <= 16 width)."""
        h = self.body(x)                                       # (N, width, s, s)
        if h.shape[-1] > EMBED_SIDE:
            h = F.adaptive_avg_pool2d(h, EMBED_SIDE)           # (N, width, 4, 4)
        return h.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes)."""
        return self.classifier(self.features(x))  # (N, K)


class BasicBlock(nn.Module):
    """ResNet basic block. With `ap`, a stride-2 block convolves at stride 1 and then
    average-pools (IDC's ResNetAP), in both the main path and the shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, ap: bool) -> None:
        super().__init__()
        s = 1 if ap else stride
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=s, padding=1, bias=False)
        self.norm1 = instance_norm(cout)
        self.pool = nn.AvgPool2d(2, 2) if (ap and stride != 1) else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = instance_norm(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=s, bias=False),
                *( [nn.AvgPool2d(2, 2)] if (ap and stride != 1) else [] ),
                instance_norm(cout),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))   # (N, cout, H, W)
        out = self.pool(out)                      # (N, cout, H/stride, W/stride)
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with instance norm.

    Stem by input size: <= 64 px the CIFAR stem (conv3x3 stride 1, no pooling); otherwise
    ResNet-18 uses torchvision's (conv7x7 stride 2 + maxpool 3/2) and ResNetAP-10 uses IDC's
    (conv7x7 stride 1 + avgpool 4 above 128 px; conv3x3 + avgpool 2 from 65 to 128 px).
    A stage that would shrink the map below 2x2 keeps its size (instance norm needs more than
    one value per channel), so small inputs still work.
    """

    def __init__(self, channels: int, num_classes: int, size: int, blocks: list[int], ap: bool,
                 width: int = 64) -> None:
        super().__init__()
        # width 64, doubled per stage: He et al. 2016 (ResNet-18); IDC's ResNetAP too (models/resnet_ap.py)
        self.stem = nn.Sequential(*_resnet_stem(channels, size, ap, width))
        s = size if size <= 64 else size // (4 if (ap and size > 128) else 2 if ap else 4)  # map side after the stem
        layers: list[nn.Module] = []
        cin = width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            for j in range(n):
                stride = 2 if (i > 0 and j == 0 and s >= 4) else 1
                layers.append(BasicBlock(cin, cout, stride=stride, ap=ap))
                s = s // stride
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.feature_dim = cin
        self.classifier = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled last stage: (N, C, H, W) -> (N, feature_dim)."""
        h = self.layers(self.stem(x))  # (N, 512, h, w)
        return F.adaptive_avg_pool2d(h, 1).flatten(1)  # (N, 512)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The features (already pooled to one value per channel): (N, C, H, W) -> (N, feature_dim)."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes)."""
        return self.classifier(self.features(x))  # (N, K)


def _resnet_stem(channels: int, size: int, ap: bool, width: int) -> list[nn.Module]:
    """The stem layers for the input size (see `ResNet`)."""
    if size <= 64:
        return [nn.Conv2d(channels, width, 3, padding=1, bias=False), instance_norm(width), nn.ReLU(inplace=True)]
    if ap and size > 128:
        return [nn.Conv2d(channels, width, 7, padding=3, bias=False), instance_norm(width), nn.ReLU(inplace=True),
                nn.AvgPool2d(4, 4)]
    if ap:
        return [nn.Conv2d(channels, width, 3, padding=1, bias=False), instance_norm(width), nn.ReLU(inplace=True),
                nn.AvgPool2d(2, 2)]
    return [nn.Conv2d(channels, width, 7, stride=2, padding=3, bias=False), instance_norm(width),
            nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, padding=1)]


ClassifierFactory = Callable[[int, int, int], nn.Module]  # (channels, num_classes, size) -> model

# ConvNet-3: the DC/DSA/DM benchmark network. ConvNet-6, ResNetAP-10 and ResNet-18: the evaluation
# networks of IDC and of Minimax diffusion on the ImageNet subsets (Gu et al. CVPR 2024, Table 1).
CLASSIFIERS: dict[str, ClassifierFactory] = {
    **{f"convnet{d}": (lambda c, k, s, d=d: ConvNet(c, k, s, depth=d)) for d in range(3, 7)},
    "resnetap10": lambda c, k, s: ResNet(c, k, s, blocks=[1, 1, 1, 1], ap=True),
    "resnet18": lambda c, k, s: ResNet(c, k, s, blocks=[2, 2, 2, 2], ap=False),
}


def build_model(name: str, channels: int, num_classes: int, size: int) -> nn.Module:
    """CLASSIFIERS[name] for images of `channels` x `size` x `size` and `num_classes` classes, from the global RNG."""
    if name not in CLASSIFIERS:
        raise UserError(f"unknown model {name!r}; choose one of {sorted(CLASSIFIERS)}")
    return CLASSIFIERS[name](channels, num_classes, size)
