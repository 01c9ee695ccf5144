"""Named training protocols for evaluation networks. Each constant cites its source.

`dc` and `idc` train on the sets' own (hard) labels. Their soft-label variants `dc-soft` and `idc-soft`
keep the optimiser, schedule and augmentation but replace the labels: a teacher (the same architecture
trained once on the full real training set, cached; `reference_classifier.teacher_classifier`) labels every
augmented batch and the student matches its softened outputs, as SRe2L, RDED and DD-Ranking evaluate.
Results under a soft protocol are a different measurement and are reported in tables of their own.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from minimaxdd.errors import UserError


@dataclass(frozen=True)
class EvalProtocol:
    """An evaluation recipe: how classifiers are trained on a set (optimiser, batch, augmentation, epochs) before
    they are tested on the real test set. Named EvalProtocol, not Protocol, so as not to read as typing.Protocol."""
    name: str
    lr: float                 # SGD learning rate per batch of `batch_size`
    momentum: float
    weight_decay: float
    batch_size: int
    augment: str              # a key of minimaxdd.data.augment.AUGMENTATIONS: "dsa" (one DSA op per batch),
                              # "rrc_flip" (random resized crop + flip), "idc" (that + colour jitter and
                              # PCA lighting) or "none"
    cutmix_p: float           # probability that a batch is CutMixed
    cutmix_beta: float
    milestones: tuple[float, ...]  # lr drops, as fractions of the epochs
    gamma: float              # lr factor at each milestone
    epochs: int | None = None # fixed epoch count; None: chosen by IPC (see epochs_for)
    temperature: float | None = None  # soft labels: KL to the teacher's outputs at this temperature (x T^2);
                                      # None: cross-entropy on the set's own labels

    @property
    def soft(self) -> bool:
        """Whether the student learns from a teacher's soft labels instead of the set's labels."""
        return self.temperature is not None

    @property
    def hard_name(self) -> str:
        """The hard-label protocol this one derives from (itself when hard)."""
        return self.name.removesuffix(SOFT_SUFFIX)

    def epochs_for(self, ipc: int | None, num_classes: int) -> int:
        """The fixed epoch count, or IDC's by images per class (`idc_epochs`)."""
        if self.epochs is not None:
            return self.epochs
        return idc_epochs(ipc, num_classes)

    def to_dict(self) -> dict:
        """The protocol as plain data (stored beside every result; `temperature` only when soft, so a hard
        protocol's record, and the cache keys made from it, are what they were before soft labels existed)."""
        d = asdict(self)
        if d["temperature"] is None:
            del d["temperature"]
        return d


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


SOFT_SUFFIX = "-soft"
# SRe2L's student training on relabelled data (VILA-Lab/SRe2L, SRe2L/validate/train_KD.sh: -T 20), the
# temperature RDED also trains with; the loss is KL(teacher || student) at T, times T^2 (Hinton et al. 2015).
SOFT_TEMPERATURE = 20.0


def soft_variant(p: EvalProtocol, temperature: float = SOFT_TEMPERATURE) -> EvalProtocol:
    """`p` with the teacher's soft labels in place of the set's labels, named `<p.name>-soft`."""
    return replace(p, name=p.name + SOFT_SUFFIX, temperature=temperature)


PROTOCOLS: dict[str, EvalProtocol] = {
    # DC / DSA / DM evaluation (Zhao et al. ICLR 2021; Zhao & Bilen ICML 2021, WACV 2023;
    # the ECCV 2024 challenge's evaluate.py): SGD 0.01, momentum 0.9, wd 5e-4, batch 256,
    # 1000 epochs, lr x0.1 at half, DSA 'color_crop_cutout_flip_scale_rotate'.
    "dc": EvalProtocol("dc", lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=256, augment="dsa",
                   cutmix_p=0.0, cutmix_beta=1.0, milestones=(0.5,), gamma=0.1, epochs=1000),
    # IDC / Minimax evaluation on ImageNet subsets (Kim et al. ICML 2022; Gu et al. CVPR 2024):
    # SGD 0.01, momentum 0.9, wd 5e-4, batch 64, epochs by IPC, lr x0.2 at 2/3 and 5/6,
    # RandomResizedCrop(scale 0.5-1) + flip + colour jitter 0.4 + PCA lighting 0.1, CutMix beta 1 on every batch.
    "idc": EvalProtocol("idc", lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=64, augment="idc",
                    cutmix_p=1.0, cutmix_beta=1.0, milestones=(2 / 3, 5 / 6), gamma=0.2, epochs=None),
}
PROTOCOLS.update({p.name: p for p in (soft_variant(PROTOCOLS["dc"]), soft_variant(PROTOCOLS["idc"]))})


def get_protocol(name: str) -> EvalProtocol:
    """PROTOCOLS[name]; an unknown name is a UserError listing the known ones."""
    if name not in PROTOCOLS:
        raise UserError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]
