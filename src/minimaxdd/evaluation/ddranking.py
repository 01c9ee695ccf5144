"""DD-Ranking's scores of a distilled set (Li et al. 2025, NUS-HPC-AI-Lab/DD-Ranking: doc/introduction.md,
ddranking/metrics/soft_label.py and aug_robust.py), as pure functions of test accuracies.

Units: every accuracy is a fraction in [0, 1], so HLR, IOR and the two ARS differences lie in [-1, 1], the
weighted sums alpha / beta too, and the normalisation (e^a - e^-1) / (e - e^-1) maps them onto [0, 1] as the
docs state ("normalized to [0, 1]"); we report LRS and ARS times 100. (DD-Ranking's code feeds accuracies in
percent into the same formula, where the normalisation no longer bounds the score; we follow the docs.)
DD-Ranking takes the best of periodic test checks with a learning rate tuned on the test set; ours are
final-epoch accuracies with fixed recipes, so the numbers are ours, not comparable digit for digit.
"""
from __future__ import annotations

import math

# DD-Ranking's default weights (compute_metrics(lrs_lambda=0.5), compute_metrics(ars_lambda=0.5); the
# leaderboard's w = 0.5).
LRS_WEIGHT = 0.5
ARS_WEIGHT = 0.5


def hard_label_recovery(full_hard: float, syn_hard: float) -> float:
    """HLR = Acc(real, hard) - Acc(syn, hard): how far the set under hard labels falls short of the full real
    training set under the same hard-label training (lower is better)."""
    return full_hard - syn_hard


def improvement_over_random(syn_any: float, random_any: float) -> float:
    """IOR = Acc(syn, any) - Acc(random, any): the gain over randomly selected real images of the same size,
    both evaluated with the set's own (soft-label) protocol."""
    return syn_any - random_any


def normalise_score(a: float) -> float:
    """(e^a - e^-1) / (e - e^-1): a in [-1, 1] -> [0, 1] (DD-Ranking's normalisation of LRS and ARS)."""
    return (math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1))


def label_robust_score(hlr: float, ior: float, w: float = LRS_WEIGHT) -> float:
    """LRS = normalise(w IOR - (1 - w) HLR), in [0, 1]."""
    return normalise_score(w * ior - (1 - w) * hlr)


def augmentation_robust_score(syn_aug: float, random_aug: float, syn_noaug: float, random_noaug: float,
                              w: float = ARS_WEIGHT) -> float:
    """ARS = normalise(w (syn_aug - random_aug) + (1 - w) (syn_noaug - random_noaug)), in [0, 1]: the gain over
    random selection with the protocol's augmentation and without it."""
    return normalise_score(w * (syn_aug - random_aug) + (1 - w) * (syn_noaug - random_noaug))


def scores(full_hard: float | None, syn_hard: float | None, syn_soft: float | None, random_soft: float | None,
           syn_noaug: float | None = None, random_noaug: float | None = None) -> dict:
    """HLR, IOR, LRS and ARS from the accuracies a run has (fractions); a score whose inputs are missing is
    left out. LRS and ARS are given in percent (x 100), HLR and IOR in percentage points."""
    out: dict = {}
    if full_hard is not None and syn_hard is not None:
        out["hlr"] = 100 * hard_label_recovery(full_hard, syn_hard)
    if syn_soft is not None and random_soft is not None:
        out["ior"] = 100 * improvement_over_random(syn_soft, random_soft)
    if "hlr" in out and "ior" in out:
        out["lrs"] = 100 * label_robust_score(out["hlr"] / 100, out["ior"] / 100)
    if None not in (syn_soft, random_soft, syn_noaug, random_noaug):
        out["ars"] = 100 * augmentation_robust_score(syn_soft, random_soft, syn_noaug, random_noaug)
    return out
