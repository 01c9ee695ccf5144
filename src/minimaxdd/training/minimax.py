"""The Minimax criteria (Gu et al., CVPR 2024, Eqs. 2-5) as pure functions of tensors, and per-class memories.

All losses take predictions `pred` (P, ...) and a memory (M, ...) of one class; trailing dims are
flattened and compared by cosine similarity (with an epsilon; the reference divides without one).

Reductions: the paper writes the minimax terms per predicted sample (Eqs. 3-4: min / max over the
memory for each prediction); the reference code takes one min / max over the whole
(predictions x memory) matrix per class. `reduction="matrix"` (the default) follows the code,
`reduction="sample"` the per-sample form, averaged over predictions.
"""
from __future__ import annotations

import torch

COS_EPS = 1e-8
REDUCTIONS = ("matrix", "sample")


def cosine_matrix(pred: torch.Tensor, memory: torch.Tensor, eps: float = COS_EPS) -> torch.Tensor:
    """(P, ...) x (M, ...) -> (P, M) cosine similarities, computed in fp32."""
    a = pred.flatten(1).float()
    b = memory.flatten(1).float().to(a.device)
    a = a / a.norm(dim=1, keepdim=True).clamp_min(eps)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(eps)
    return a @ b.T                                                           # (P, M)


def _check(pred, memory, reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if memory.shape[0] == 0:
        raise ValueError("the memory is empty; skip the term until it holds at least one sample")
    if pred.flatten(1).shape[1] != memory.flatten(1).shape[1]:
        raise ValueError(f"pred {tuple(pred.shape)} and memory {tuple(memory.shape)} have different sizes")


def representativeness_loss(pred: torch.Tensor, memory: torch.Tensor, reduction: str = "matrix") -> torch.Tensor:
    """1 - min cos(pred, real memory) (Eq. 3): pull toward the least similar real sample."""
    _check(pred, memory, reduction)
    sim = cosine_matrix(pred, memory)
    if reduction == "matrix":
        return 1 - sim.min()
    return (1 - sim.min(dim=1).values).mean()


def diversity_loss(pred: torch.Tensor, memory: torch.Tensor, reduction: str = "matrix") -> torch.Tensor:
    """max cos(pred, memory of past predictions) (Eq. 4): push away from the most similar one."""
    _check(pred, memory, reduction)
    sim = cosine_matrix(pred, memory)
    if reduction == "matrix":
        return sim.max()
    return sim.max(dim=1).values.mean()


def representativeness_mean_loss(pred: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """1 - cos(pred_i, mean of the real samples), averaged over predictions (Eq. 2, the non-minimax form)."""
    _check(pred, real, "matrix")
    return (1 - cosine_matrix(pred, real.flatten(1).float().mean(0, keepdim=True))).mean()


def diversity_mean_loss(pred: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over all (prediction, memory) pairs (the non-minimax diversity term)."""
    _check(pred, memory, "matrix")
    return cosine_matrix(pred, memory).mean()


class ClassMemory:
    """Fixed-size FIFO ring buffers, one per class, on the device: (classes, size, dim).

    `push` writes a batch's samples into their classes' buffers (oldest overwritten first);
    `get(c)` returns class c's valid entries (order irrelevant to the min / max / mean terms).
    """

    def __init__(self, num_classes: int, size: int, dim: int, device="cpu", dtype=torch.float32):
        if size < 1:
            raise ValueError(f"memory size must be at least 1, got {size}")
        self.size = size
        self.data = torch.zeros(num_classes, size, dim, device=device, dtype=dtype)
        self.count = torch.zeros(num_classes, dtype=torch.long)   # valid entries per class (<= size)
        self.ptr = torch.zeros(num_classes, dtype=torch.long)     # next slot to write per class

    @torch.no_grad()
    def push(self, labels: torch.Tensor, x: torch.Tensor) -> None:
        x = x.detach().flatten(1).to(self.data.dtype)
        labels = labels.cpu()
        for c in labels.unique().tolist():
            rows = x[(labels == c).to(x.device)]
            rows = rows[-self.size:]                                         # a batch larger than the buffer
            slots = (self.ptr[c] + torch.arange(len(rows))) % self.size
            self.data[c, slots.to(self.data.device)] = rows
            self.ptr[c] = (self.ptr[c] + len(rows)) % self.size
            self.count[c] = min(self.size, int(self.count[c]) + len(rows))

    def get(self, c: int) -> torch.Tensor:
        return self.data[c, :int(self.count[c])]

    def __len__(self) -> int:
        return int(self.count.sum())

    def state_dict(self) -> dict:
        return {"data": self.data.cpu(), "count": self.count, "ptr": self.ptr}

    def load_state_dict(self, s: dict) -> None:
        self.data.copy_(s["data"])
        self.count.copy_(s["count"])
        self.ptr.copy_(s["ptr"])


# The rows of the paper's Table 5: which terms each objective uses.
OBJECTIVES: dict[str, tuple[str, ...]] = {
    "simple": (),
    "rep": ("rep",),
    "div": ("div",),
    "rep-mean": ("rep-mean",),
    "div-mean": ("div-mean",),
    "minimax": ("rep", "div"),
    "mean": ("rep-mean", "div-mean"),
}


def minimax_terms(x0_hat: torch.Tensor, x0: torch.Tensor, labels: torch.Tensor, real: ClassMemory,
                  pred: ClassMemory, objective: str, lambda_r: float, lambda_d: float,
                  reduction: str = "matrix", gather=None) -> tuple[torch.Tensor, dict[str, float]]:
    """The added loss for one batch, then enqueue the batch (Algorithm 1 of the paper).

    x0_hat: predicted clean samples (N, ...) with gradients; x0: the real clean samples (N, ...);
    labels: dataset labels (N,). For each class in the batch whose prediction memory is non-empty,
    the representativeness term compares x0_hat of that class with the real memory and the diversity
    term with the prediction memory; each is weighted by its lambda and averaged over the distinct
    classes of the batch (as the reference does). The batch is enqueued afterwards, so it never
    meets itself. `gather` (e.g. dist.all_gather_cat) makes every process enqueue every process's
    batch, so the memories stay identical across ranks (--sync-memory); by default each rank keeps
    its own, as the reference does.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    use = OBJECTIVES[objective]
    total = x0_hat.new_zeros(())
    logs = {"rep": 0.0, "div": 0.0}
    if use:
        classes = labels.unique().tolist()
        rep_sum, div_sum = x0_hat.new_zeros(()), x0_hat.new_zeros(())
        for c in classes:
            if len(pred.get(c)) == 0:
                continue
            mask = labels == c
            p = x0_hat[mask]
            if "rep" in use:
                rep_sum = rep_sum + representativeness_loss(p, real.get(c), reduction)
            if "rep-mean" in use:
                rep_sum = rep_sum + representativeness_mean_loss(p, real.get(c))
            if "div" in use:
                div_sum = div_sum + diversity_loss(p, pred.get(c), reduction)
            if "div-mean" in use:
                div_sum = div_sum + diversity_mean_loss(p, pred.get(c))
        n = len(classes)
        total = (lambda_r * rep_sum + lambda_d * div_sum) / n
        logs = {"rep": float(rep_sum.detach()) / n, "div": float(div_sum.detach()) / n}
    x0_hat = x0_hat.detach()
    if gather is not None:
        labels, x0, x0_hat = gather(labels), gather(x0), gather(x0_hat)
    real.push(labels, x0)
    pred.push(labels, x0_hat)
    return total, logs

