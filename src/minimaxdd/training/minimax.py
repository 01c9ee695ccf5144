"""The Minimax criteria (Gu et al., CVPR 2024, Eqs. 2-5) as pure functions of tensors, per-class
memories, and `MinimaxStep`, the fine-tuning step that computes the terms and then fills the memories.

All losses take predictions `pred` (P, ...) and a memory (M, ...) of one class; trailing dims are
flattened and compared by cosine similarity (with an epsilon; the reference divides without one).

Reductions: the paper writes the minimax terms per predicted sample (Eqs. 3-4: min / max over the
memory for each prediction); the reference code takes one min / max over the whole
(predictions x memory) matrix per class. `reduction="matrix"` (the default) follows the code,
`reduction="sample"` the per-sample form, averaged over predictions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from minimaxdd.training.loop import Batch

COS_EPS = 1e-8
REDUCTIONS = ("matrix", "sample")
# What the cosines compare (issue 29): the paper's estimate as is; minus the training set's mean (the paper's
# VAE latents are near zero-mean, pixels are not: same-class Fashion-MNIST images have cosines of 0.9 and
# more in [-1, 1] pixels); or the reference classifier's pooled features of it (pixel models only).
EMBEDDINGS = ("pixel", "centred", "feature")


def cosine_matrix(pred: torch.Tensor, memory: torch.Tensor, eps: float = COS_EPS) -> torch.Tensor:
    """(P, ...) x (M, ...) -> (P, M) cosine similarities, computed in fp32."""
    a = pred.flatten(1).float()
    b = memory.flatten(1).float().to(a.device)
    a = a / a.norm(dim=1, keepdim=True).clamp_min(eps)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(eps)
    return a @ b.T                                                           # (P, M)


def _check(pred: torch.Tensor, memory: torch.Tensor, reduction: str) -> None:
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

    def __init__(self, num_classes: int, size: int, dim: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
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
        """Class c's valid entries (n, dim), n <= size: a view, not a copy."""
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


def minimax_loss(x0_hat: torch.Tensor, labels: torch.Tensor, real: ClassMemory, pred: ClassMemory, objective: str,
                 lambda_r: float, lambda_d: float, reduction: str = "matrix") -> tuple[torch.Tensor, dict[str, float]]:
    """The loss `objective` (a key of OBJECTIVES) adds for one batch; reads the memories, changes nothing.

    x0_hat: predicted clean samples (N, ...) with gradients; labels: their memory slots (N,). For each
    class in the batch whose prediction memory is non-empty, the representativeness term compares
    x0_hat of that class with the real memory and the diversity term with the prediction memory;
    each is weighted by its lambda and averaged over the distinct classes of the batch (as the
    reference does). Returns the loss (a scalar) and the unweighted means {"rep", "div"} to log.
    """
    use = OBJECTIVES[objective]
    if not use:
        return x0_hat.new_zeros(()), {"rep": 0.0, "div": 0.0}
    classes = labels.unique().tolist()
    rep_sum, div_sum = x0_hat.new_zeros(()), x0_hat.new_zeros(())
    for c in classes:
        if len(pred.get(c)) == 0:
            continue                     # the class's first batch: nothing to compare it with yet
        p = x0_hat[labels == c]                                              # (P, ...)
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
    return total, {"rep": float(rep_sum.detach()) / n, "div": float(div_sum.detach()) / n}


def scaled_gradient(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (N, ...) unchanged in value, with the gradient that flows back through it multiplied by scale (N,) per
    sample: a per-sample Jacobian factor, as the paper's d x0_hat / d eps_hat = -sigma is one."""
    s = scale.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return x.detach() + s * (x - x.detach())


@dataclass
class MinimaxStep:
    """The fine-tuning step's addition to the loss (Algorithm 1 of the paper), a `training.loop.StepLoss`.

    Each call computes `minimax_loss` of the batch against the memories as they are, then pushes the
    batch (real x0 and detached predictions) into them, so a batch never meets itself. `gather` (e.g.
    dist.all_gather_cat) makes every process push every process's batch, so the memories stay
    identical across ranks (--sync-memory); without it each rank keeps its own, as the reference does.
    """
    objective: str                       # a key of OBJECTIVES
    lambda_r: float
    lambda_d: float
    reduction: str                       # one of REDUCTIONS
    real: ClassMemory                    # recent real samples, one buffer per slot
    pred: ClassMemory                    # recent predictions x0_hat, one buffer per slot
    slot: torch.Tensor                   # (network classes,) the memory slot of each network class, -1: unused
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None
    # per-sample factor on the gradient the terms send into x0_hat, from the batch's noise levels
    # (terms["sigma"]); None: none (the DDPM formulation, and EDM's "native" transfer). See `scaled_gradient`.
    grad_scale: Callable[[torch.Tensor], torch.Tensor] | None = None
    # what the cosines compare, from samples (n, C, H, W) in model space to (n, D), differentiable; None: the
    # samples as they are. The memories hold embedded samples.
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, terms: dict[str, torch.Tensor], batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        slots = self.slot[batch.labels]                                      # (n,)
        x0_hat = terms["x0_hat"]
        if self.grad_scale is not None:
            x0_hat = scaled_gradient(x0_hat, self.grad_scale(terms["sigma"]))
        pred = self.embedding(x0_hat)
        loss, logs = minimax_loss(pred, slots, self.real, self.pred, self.objective, self.lambda_r,
                                  self.lambda_d, self.reduction)
        with torch.no_grad():
            real = self.embedding(batch.x0)
        self.push(slots, real, pred)
        return loss, logs

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """What the cosines see of samples x (n, C, H, W): `embed(x)`, or x itself."""
        return x if self.embed is None else self.embed(x)

    def push(self, slots: torch.Tensor, x0: torch.Tensor, x0_hat: torch.Tensor) -> None:
        """Enqueue a batch: real samples x0 (n, ...) and predictions x0_hat (n, ...), both embedded, stored
        detached."""
        x0_hat = x0_hat.detach()
        if self.gather is not None:
            slots, x0, x0_hat = self.gather(slots), self.gather(x0), self.gather(x0_hat)
        self.real.push(slots, x0)
        self.pred.push(slots, x0_hat)

    def memories(self) -> dict[str, ClassMemory]:
        """The state a checkpoint holds for a resumed run to continue exactly."""
        return {"real_memory": self.real, "pred_memory": self.pred}
