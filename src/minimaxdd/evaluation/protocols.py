"""Named training protocols for evaluation networks. Each constant cites its source."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from minimaxdd.errors import UserError


@dataclass(frozen=True)
class Protocol:
    name: str
    lr: float                 # SGD learning rate per batch of `batch_size`
    momentum: float
    weight_decay: float
    batch_size: int
    augment: str              # a key of minimaxdd.data.augment.AUGMENTATIONS: "dsa" (one DSA op per batch),
                              # "rrc_flip" (random resized crop + flip) or "none"
    cutmix_p: float           # probability that a batch is CutMixed
    cutmix_beta: float
    milestones: tuple[float, ...]  # lr drops, as fractions of the epochs
    gamma: float              # lr factor at each milestone
    epochs: int | None = None # fixed epoch count; None: chosen by IPC (see epochs_for)

    def epochs_for(self, ipc: int | None, num_classes: int) -> int:
        """The fixed epoch count, or IDC's by images per class (`idc_epochs`)."""
        if self.epochs is not None:
            return self.epochs
        return idc_epochs(ipc, num_classes)

    def to_dict(self) -> dict:
        """The protocol as plain data (stored beside every result)."""
        return asdict(self)


def idc_epochs(ipc: int | None, num_classes: int) -> int:
    """Epochs by images per class, from the IDC / Minimax evaluation code
    (snu-mllab/Efficient-Dataset-Condensation; vimar-gu/MinimaxDiffusion train.py):
    IPC 1: 3000, <=10: 2000, <=50: 1500, <=200: 1000, <=500: 500, else 300;
    two thirds of that for 100-class datasets. `ipc=None` (full data) counts as large."""
    if ipc is None:
        e = 300
    elif ipc <= 1:
        e = 3000
    elif ipc <= 10:
        e = 2000
    elif ipc <= 50:
        e = 1500
    elif ipc <= 200:
        e = 1000
    elif ipc <= 500:
        e = 500
    else:
        e = 300
    return e * 2 // 3 if num_classes >= 100 else e


PROTOCOLS: dict[str, Protocol] = {
    # DC / DSA / DM evaluation (Zhao et al. ICLR 2021; Zhao & Bilen ICML 2021, WACV 2023;
    # the ECCV 2024 challenge's evaluate.py): SGD 0.01, momentum 0.9, wd 5e-4, batch 256,
    # 1000 epochs, lr x0.1 at half, DSA 'color_crop_cutout_flip_scale_rotate'.
    "dc": Protocol("dc", lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=256, augment="dsa",
                   cutmix_p=0.0, cutmix_beta=1.0, milestones=(0.5,), gamma=0.1, epochs=1000),
    # IDC / Minimax evaluation on ImageNet subsets (Kim et al. ICML 2022; Gu et al. CVPR 2024):
    # SGD 0.01, momentum 0.9, wd 5e-4, batch 64, epochs by IPC, lr x0.2 at 2/3 and 5/6,
    # RandomResizedCrop(scale 0.5-1) + flip, CutMix beta 1 on every batch.
    "idc": Protocol("idc", lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=64, augment="rrc_flip",
                    cutmix_p=1.0, cutmix_beta=1.0, milestones=(2 / 3, 5 / 6), gamma=0.2, epochs=None),
}


def get_protocol(name: str) -> Protocol:
    """PROTOCOLS[name]; an unknown name is a UserError listing the known ones."""
    if name not in PROTOCOLS:
        raise UserError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]
