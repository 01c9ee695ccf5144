"""Named training protocols for evaluation networks. Each constant cites its source.

`dc` and `idc` train on the sets' own (hard) labels.

`rded` and `rded-imagenet` are the soft-label evaluation of RDED (LINs-lab/RDED, validation/main.py with the
defaults of argument.py and the scripts/), which DD-Ranking's soft-label scores also train with: a frozen
teacher trained on the full real data labels every augmented, CutMixed batch; the student (AdamW, half-cosine)
matches its outputs by KL at T = 20, not scaled by T^2. `rded-noaug` is the same without augmentation or mixing,
the "without augmentation" arm of DD-Ranking's augmentation-robust score (ARS).

`dc-soft` and `idc-soft` are ours, not a published recipe: `dc` / `idc` (SGD, step drops, their epochs,
augmentation and CutMix) with the labels replaced by a teacher's outputs, KL at T = 20 times T^2, and the teacher
the ~100k-image reference classifier (`reference_classifier.teacher_classifier`), not a fully trained one.
They differ from RDED in the optimiser, schedule, epochs, mixing, augmentation, loss scale and teacher, so their
numbers are not comparable with published soft-label tables; use `rded` for that.
Results under a soft protocol are a different measurement and are reported in tables of their own.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

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
    temperature: float | None = None  # soft labels: KL to the teacher's outputs at this temperature;
                                      # None: cross-entropy on the set's own labels
    # Fields added with `rded`. Their defaults are dc / idc's recipe and `to_dict` leaves a field out while it
    # holds its default, so those protocols' records, and the cache keys made from them, are unchanged.
    optimizer: str = "sgd"            # "sgd" (lr, momentum, weight_decay) or "adamw" (lr, betas, weight_decay)
    betas: tuple[float, float] = (0.9, 0.999)   # AdamW only
    decay_norm_and_bias: bool = True  # False: weight decay only on conv / linear weights (RDED's get_parameters)
    schedule: str = "multistep"       # a key of SCHEDULES: "multistep" (milestones, gamma) or "half_cosine"
    mixing: str = "cutmix"            # "cutmix" (Beta(cutmix_beta)) or "mixup" (Beta(mixup_alpha)), with cutmix_p
    mixup_alpha: float = 0.8
    kl_times_t2: bool = True          # soft: scale the KL by T^2 (Hinton et al. 2015); RDED does not
    batch_by_ipc: tuple[tuple[int, int], ...] | None = None  # ((ipc, batch), ...): RDED's batch rule, see batch_for
    teacher: str = "reference"        # soft: a key of minimaxdd.evaluation.teachers.TEACHER_RECIPES

    @property
    def soft(self) -> bool:
        """Whether the student learns from a teacher's soft labels instead of the set's labels."""
        return self.temperature is not None

    @property
    def hard_name(self) -> str:
        """The hard-label protocol this one derives from (itself when hard; `rded*`: `dc`, the hard protocol
        the CIFAR-style tables use, as DD-Ranking's hard-label arm trains without soft labels)."""
        if self.name.startswith("rded"):
            return "dc"
        return self.name.removesuffix(SOFT_SUFFIX)

    def epochs_for(self, ipc: int | None, num_classes: int) -> int:
        """The fixed epoch count, or IDC's by images per class (`idc_epochs`)."""
        if self.epochs is not None:
            return self.epochs
        return idc_epochs(ipc, num_classes)

    def batch_for(self, ipc: int | None, num_classes: int, n: int) -> int:
        """The batch size for a set of n images: `batch_size`, or RDED's rule (argument.py): by IPC from
        `batch_by_ipc` (the first entry whose IPC is at least the set's; ours for IPCs between RDED's), doubled
        for 100 classes or more, at most the set's size."""
        if self.batch_by_ipc is None:
            return self.batch_size
        b = next((bs for k, bs in self.batch_by_ipc if ipc is not None and ipc <= k), self.batch_by_ipc[-1][1])
        b = b * 2 if num_classes >= 100 else b
        return max(1, min(b, n))

    def to_dict(self) -> dict:
        """The protocol as plain data (stored beside every result). A field added after the first protocols
        (`temperature` and the ones after it) is left out while it holds its default, so a `dc` / `idc`
        record, and the cache keys made from it, are what they were before those fields existed."""
        d = asdict(self)
        for f in fields(self)[_FIRST_ADDED:]:
            if getattr(self, f.name) == f.default:
                del d[f.name]
        return d


_FIRST_ADDED = 11   # index of `temperature` among EvalProtocol's fields: it and the later ones are optional records


def idc_epochs(ipc: int | None, num_classes: int) -> int:
    """Epochs by images per class, IDC's `ipc_epoch` (snu-mllab/Efficient-Dataset-Condensation, argument.py;
    the Minimax evaluation runs it): IPC 1: 3000, <=10: 2000, <=50: 1500, <=200: 1000, <=500: 500, else 300;
    for exactly 100 classes two thirds of that rounded down to a multiple of 100 (2000, 1300, 1000, 600, 300,
    200); 1000 classes keep the 10-class counts. `ipc=None` (full data) counts as large."""
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
    if num_classes == 100:
        e = int(2 / 3 * e)
        e -= e % 100
    return e


# IDC on ImageNet with 100 classes or more (snu-mllab/Efficient-Dataset-Condensation, argument.py:
# `if args.nclass >= 100`): lr 0.1, weight decay 1e-4, batch at least 128.
IDC_MANY_CLASSES = 100
IDC_MANY_CLASSES_LR = 0.1
IDC_MANY_CLASSES_WD = 1e-4
IDC_MANY_CLASSES_MIN_BATCH = 128


def for_classes(p: EvalProtocol, num_classes: int) -> EvalProtocol:
    """`p` as its authors run it on `num_classes` classes: `idc` (and `idc-soft`) take IDC's settings for 100
    classes or more; every other protocol is returned unchanged."""
    if p.hard_name != "idc" or num_classes < IDC_MANY_CLASSES:
        return p
    return replace(p, lr=IDC_MANY_CLASSES_LR, weight_decay=IDC_MANY_CLASSES_WD,
                   batch_size=max(IDC_MANY_CLASSES_MIN_BATCH, p.batch_size))


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
    # RDED's soft-label evaluation (LINs-lab/RDED at 3f6453d): validation/main.py trains the student with
    # AdamW(betas (0.9, 0.999)), weight decay only on conv / linear weights (validation/utils.py get_parameters),
    # a per-epoch LambdaLR 0.5 (1 + cos(pi e / E / 2)), i.e. half a cosine from 1x to 0.5x; the loss
    # KLDivLoss(batchmean) of log_softmax(student / T) to softmax(teacher / T), not times T^2; CutMix on every
    # batch, the teacher labelling the mixed images. argument.py: adamw_lr 0.001 for conv3-6 and resnet18,
    # adamw_weight_decay 0.01, cutmix beta 1.0, T 20 with CutMix (4 with Mixup 0.8), batch by IPC
    # 1: 10, 10: 50, 50: 100 (x2 for 100 / 1000 classes, at most the set's size); scripts/*.sh: --re-epochs 300.
    # Augmentation: ShufflePatches(factor) then RandomResizedCrop(scale (1 / factor, 1)) and a flip; the CIFAR
    # scripts use --factor 1 (no patch shuffle, a crop of the whole image: a flip only), the ImageNet ones 2.
    # DD-Ranking (NUS-HPC-AI-Lab/DD-Ranking, ddranking/utils/train_and_eval.py get_lr_scheduler "cosine") uses
    # the same half-cosine. `lr` is per batch of the size the rule gives.
    "rded": EvalProtocol("rded", lr=1e-3, momentum=0.9, weight_decay=0.01, batch_size=100, augment="flip",
                         cutmix_p=1.0, cutmix_beta=1.0, milestones=(), gamma=1.0, epochs=300, temperature=20.0,
                         optimizer="adamw", betas=(0.9, 0.999), decay_norm_and_bias=False,
                         schedule="half_cosine", kl_times_t2=False, batch_by_ipc=((1, 10), (10, 50), (50, 100)),
                         teacher="full"),
}
# RDED on ImageNet subsets (its scripts/imagenet-*.sh: --factor 2): 2x2 patch shuffle, then RandomResizedCrop
# (scale 0.5-1) and a flip.
PROTOCOLS["rded-imagenet"] = replace(PROTOCOLS["rded"], name="rded-imagenet", augment="rded_patch2")
# The "without augmentation" arm of DD-Ranking's ARS (ddranking/metrics/aug_robust.py, aug_func None): the same
# training without augmentation or mixing.
PROTOCOLS["rded-noaug"] = replace(PROTOCOLS["rded"], name="rded-noaug", augment="none", cutmix_p=0.0)
PROTOCOLS.update({p.name: p for p in (soft_variant(PROTOCOLS["dc"]), soft_variant(PROTOCOLS["idc"]))})
# The protocol each soft protocol is compared with under hard labels (DD-Ranking's HLR) and its no-augmentation
# arm (ARS); `<name>-soft` compares with `<name>`.
NO_AUG = {"rded": "rded-noaug", "rded-imagenet": "rded-noaug"}


def get_protocol(name: str) -> EvalProtocol:
    """PROTOCOLS[name]; an unknown name is a UserError listing the known ones."""
    if name not in PROTOCOLS:
        raise UserError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]
