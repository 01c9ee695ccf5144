"""Samplers: ancestral DDPM (respaced), DDIM, DPM-Solver++(2M) and its SDE variant, batched and seed-stable.

`SAMPLERS` names them (the CLI's `--sampler` choices); each is a function
`(net, noise, steps, clip, on_step) -> x0 (N, C, H, W)` over the schedule of
`minimaxdd.diffusion.schedule`, and `generate` runs one on a model, batch by batch.
Every image has its own noise stream, seeded from (seed, class, index), so image i of class c is
drawn from the same noise whatever the batch size or the order of generation. Classifier-free
guidance runs the conditional and the null-class halves in one network call.
"""
from __future__ import annotations

import contextlib
import copy
import functools
from contextlib import AbstractContextManager
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from minimaxdd import distributed as dist
from minimaxdd.diffusion.schedule import NUM_TIMESTEPS, Diffusion
from minimaxdd.precision import resolve_precision
from minimaxdd.runtime import autocast, progress

# 2^64 / golden ratio, the increment of SplitMix64 (Steele, Lea & Flood, OOPSLA 2014); we use it to mix
# the parts of an image's seed so that nearby (seed, class, index) triples give unrelated seeds.
_MIX = 0x9E3779B97F4A7C15

# net(x (N, C, H, W), t (N,) training steps) -> network output (N, C or 2C, H, W), float32
Net = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def image_seed(seed: int, label: int, index: int) -> int:
    """A seed for image `index` of class `label`, independent of batching."""
    h = (int(seed) * _MIX + int(label)) % 2**63
    return (h * _MIX + int(index) + 1) % 2**63


class PerImageNoise:
    """Standard-normal draws of one image shape, each image from its own generator."""

    def __init__(self, seeds: list[int], shape: tuple[int, ...], device: str | torch.device) -> None:
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.shape, self.device = shape, device

    def __call__(self) -> torch.Tensor:
        """One draw per image: (N, *shape) on the device."""
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.gens]).to(self.device)


def guided_fn(model: nn.Module, y: torch.Tensor, scale: float, cfg_channels: int | None,
              precision: str) -> Net:
    """net(x, t) -> network output (float32), t in training steps, with classifier-free guidance.

    Guidance mixes the epsilon of the conditional and null-class halves; the learned-variance
    channels are taken from the conditional half. `cfg_channels` limits guidance to the first k
    latent channels: the official DiT sampling script guides only 3 of the 4 (a quirk kept for
    faithful reproduction; None guides all).
    """
    null = torch.full_like(y, model.num_classes)       # (N,) the null class
    p0 = next(model.parameters(), None)
    dtype = torch.float32 if p0 is None else p0.dtype   # a model cast to bf16 runs without autocast
    used = resolve_precision(precision, p0.device if p0 is not None else "cpu") if dtype == torch.float32 else "fp32"

    def net(x: torch.Tensor, mt: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, used):
            xin = x.to(dtype)
            if scale == 1.0:
                return model(xin, mt, y).float()
            out = model(torch.cat([xin, xin]), torch.cat([mt, mt]), torch.cat([y, null])).float()  # (2N, C', H, W)
        cond, uncond = out.chunk(2)                     # (N, C', H, W) each
        C = x.shape[1]
        k = C if cfg_channels is None else cfg_channels
        eps = cond[:, :C].clone()                       # (N, C, H, W)
        eps[:, :k] = uncond[:, :k] + scale * (cond[:, :k] - uncond[:, :k])
        return torch.cat([eps, cond[:, C:]], dim=1)     # (N, C', H, W)
    return net


def _clip(x0: torch.Tensor, clip: bool) -> torch.Tensor:
    return x0.clamp(-1, 1) if clip else x0


def ddpm(net: Net, noise: PerImageNoise, steps: int, clip: bool, on_step: Callable | None = None) -> torch.Tensor:
    """Ancestral sampling on the schedule respaced to `steps` (the paper's sampler, 50 steps)."""
    d = Diffusion.respaced(steps)
    x = noise()                                                       # (N, C, H, W)
    C = x.shape[1]
    for i in reversed(range(steps)):
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)  # (N,) respaced step
        out = net(x, d.model_t(t))                                    # (N, C or 2C, H, W)
        _, logvar, x0, _ = d.p_mean_logvar(out, x, t, C)
        mean, _ = d.q_posterior(_clip(x0, clip), x, t)                # (N, C, H, W)
        x = mean + torch.exp(0.5 * logvar) * noise() if i > 0 else mean
        if on_step is not None:
            on_step()
    return x


def ddim(net: Net, noise: PerImageNoise, steps: int, clip: bool, on_step: Callable | None = None) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) on the respaced schedule (Song et al. 2021)."""
    d = Diffusion.respaced(steps)
    x = noise()                                                       # (N, C, H, W)
    C = x.shape[1]
    for i in reversed(range(steps)):
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)  # (N,) respaced step
        eps = net(x, d.model_t(t))[:, :C]                             # (N, C, H, W)
        x0 = _clip(d.predict_x0(x, t, eps), clip)
        eps = d.predict_eps(x, t, x0)
        acp_prev = d.coef("alphas_cumprod_prev", t, x.ndim)           # (N, 1, 1, 1)
        x = acp_prev.sqrt() * x0 + (1 - acp_prev).sqrt() * eps
        if on_step is not None:
            on_step()
    return x


SPACINGS = ("time", "logsnr")


def dpm_time_points(steps: int, spacing: str = "time") -> np.ndarray:
    """The training steps a DPM-Solver visits, from 999 down to 0 (steps + 1 points, fewer if rounding merges some).

    "time": uniform in t (diffusers' linspace; the DPM-Solver authors' advice for high-resolution and
    latent models). "logsnr": uniform in lambda = log(alpha / sigma) (their advice for low-resolution
    pixel models; Lu et al. 2022), rounded to the nearest training step.
    Near t = 0 lambda moves fast, so at high step counts neighbouring points can round to the same
    step; those are merged (a zero-length step would divide by zero).
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    T = NUM_TIMESTEPS
    if spacing == "time":
        ts = np.linspace(T - 1, 0, steps + 1)
    else:
        acp = Diffusion().np["alphas_cumprod"]
        lam = 0.5 * np.log(acp / (1 - acp))                        # decreasing in t
        ts = np.interp(np.linspace(lam[-1], lam[0], steps + 1), lam[::-1], np.arange(T)[::-1])
    ts = np.round(ts).astype(np.int64)
    return ts[np.r_[True, np.diff(ts) != 0]]


def _dpm_solver(net: Net, noise: PerImageNoise, steps: int, clip: bool, on_step: Callable | None,
                stochastic: bool, spacing: str) -> torch.Tensor:
    d = Diffusion()
    ts = dpm_time_points(steps, spacing)                              # (n + 1,) training steps, decreasing
    acp = d.np["alphas_cumprod"]
    alpha, sigma = np.sqrt(acp[ts]), np.sqrt(1 - acp[ts])             # (n + 1,) each
    lam = np.log(alpha / sigma)                                       # (n + 1,) log-SNR / 2, increasing
    n = len(ts) - 1
    x = noise()                                                       # (N, C, H, W)
    C = x.shape[1]
    prev_x0, prev_h = None, None
    for i in range(n):
        t = torch.full((x.shape[0],), int(ts[i]), dtype=torch.long, device=x.device)  # (N,)
        x0 = _clip(d.predict_x0(x, t, net(x, t)[:, :C]), clip)       # (N, C, H, W)
        h = lam[i + 1] - lam[i]
        # The last step is first order: its h is the largest, so r = prev_h / h is small and the
        # second-order extrapolation (x0 - prev) / (2r) blows up (on a Gaussian whose exact score is
        # known, 2M in 20 time-uniform steps gave std 0.39 for 0.30 with it, 0.26 without).
        first_order = prev_x0 is None or i == n - 1
        D1 = 0 if first_order else (x0 - prev_x0) * (h / prev_h)   # (x0 - prev) / r, r = prev_h / h
        if stochastic:
            # SDE-DPM-Solver++(2M): x_t = (s_t/s_s) e^-h x + a_t (1 - e^-2h)(D0 + D1/2) + s_t sqrt(1 - e^-2h) z
            # (Lu et al. 2022b, DPM-Solver++; the 2M midpoint form that diffusers calls sde-dpmsolver++)
            em = -np.expm1(-2 * h)
            x = (sigma[i + 1] / sigma[i] * np.exp(-h)) * x + alpha[i + 1] * em * (x0 + 0.5 * D1) \
                + sigma[i + 1] * np.sqrt(em) * noise()
        else:
            # DPM-Solver++(2M), Algorithm 2: D = x0 + D1 / 2
            x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * np.expm1(-h) * (x0 + 0.5 * D1)
        prev_x0, prev_h = x0, h
        if on_step is not None:
            on_step()
    for _ in range(steps - n):   # merged points: keep the progress count honest
        if on_step is not None:
            on_step()
    return x


def dpm_solver(net: Net, noise: PerImageNoise, steps: int, clip: bool, on_step: Callable | None = None,
               spacing: str = "time") -> torch.Tensor:
    """DPM-Solver++(2M) in data prediction (Lu et al. 2022, Algorithm 2) on the discrete schedule.

    One network call per step, at the points of `dpm_time_points(steps, spacing)`; the first and
    the last steps are first order.
    """
    return _dpm_solver(net, noise, steps, clip, on_step, stochastic=False, spacing=spacing)


def sde_dpm_solver(net: Net, noise: PerImageNoise, steps: int, clip: bool, on_step: Callable | None = None,
                   spacing: str = "time") -> torch.Tensor:
    """SDE-DPM-Solver++(2M): the stochastic variant, fresh noise at every step like ancestral DDPM.

    Same time points and network calls as `dpm_solver`. It ignores a learned variance, as the ODE
    solver does, but keeps injecting noise, which few-step ancestral sampling relies on.
    """
    return _dpm_solver(net, noise, steps, clip, on_step, stochastic=True, spacing=spacing)


# (net, noise, steps, clip, on_step) -> samples (N, C, H, W); the keys are the CLI's --sampler choices.
Sampler = Callable[..., torch.Tensor]
SAMPLERS: dict[str, Sampler] = {"ddpm": ddpm, "ddim": ddim, "dpm-solver": dpm_solver,
                                "sde-dpm-solver": sde_dpm_solver}
DPM_SAMPLERS = ("dpm-solver", "sde-dpm-solver")


def sampling_network(model: nn.Module, precision: str = "fp32", compile: bool = False) -> nn.Module:
    """The network as `generate` runs it: a bf16 copy for precision "bf16", compiled if asked.

    `generate` runs a compiled network with its weights frozen (inductor's `freezing`): they become
    constants, which lets inductor fold and prepack them for the CPU's matmul kernels (a bf16
    dit-s/2 forward at batch 16: 0.28 s frozen against 0.34 s compiled without it). The result
    serves inference only and does not see later changes to `model`'s weights.
    """
    model.eval()
    if resolve_precision(precision, next(model.parameters(), torch.empty(0)).device) == "bf16":
        model = copy.deepcopy(model).to(torch.bfloat16)
    if compile:
        model = torch.compile(model)   # attributes (num_classes, ...) pass through; frozen by `generate`
    return model


def frozen_weights(enabled: bool = True) -> AbstractContextManager:
    """Within: torch.compile freezes the weights of what it compiles (see `sampling_network`).

    Inductor reads the setting while a first call traces and compiles, so a compiled sampling
    network is called within this context every time.
    """
    if not enabled:
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config
    return inductor_config.patch(freezing=True)


def sampler_fn(sampler: str, spacing: str = "time") -> Sampler:
    """SAMPLERS[sampler], with the DPM-Solvers' time points placed by `spacing`; unknown names and a
    spacing other than "time" for DDPM or DDIM are ValueErrors."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if spacing != "time" and sampler not in DPM_SAMPLERS:
        raise ValueError(f"spacing {spacing!r} applies to {' and '.join(DPM_SAMPLERS)} only; "
                         f"{sampler} respaces uniformly in time")
    return SAMPLERS[sampler] if sampler not in DPM_SAMPLERS else functools.partial(SAMPLERS[sampler], spacing=spacing)


def _pad_batch(y: torch.Tensor, seeds: list[int], batch_size: int) -> tuple[torch.Tensor, list[int]]:
    """Pad a short batch to `batch_size` with copies of its last image (labels (n,) -> (batch_size,)).

    A compiled network would recompile for one more batch shape; images do not interact in the
    network, so the padding leaves the others unchanged and is dropped after sampling."""
    n = len(y)
    return torch.cat([y, y[-1:].expand(batch_size - n)]), list(seeds) + [seeds[-1]] * (batch_size - n)


@torch.no_grad()
def generate(model: nn.Module, labels: torch.Tensor, seeds: list[int], *, sampler: str = "ddpm",
             steps: int = 50, cfg_scale: float = 1.0, cfg_channels: int | None = None, clip: bool = False,
             precision: str = "fp32", batch_size: int = 64, device: str | torch.device = "cpu", desc: str = "sample",
             compile: bool = False, spacing: str = "time", network: nn.Module | None = None) -> torch.Tensor:
    """Sample one latent per (label, seed): (N, C, H, W) float32 on the CPU.

    `labels` are the network's class indices; the null class for guidance is model.num_classes.
    precision "bf16" runs a bf16 copy of the network (faster than autocast on CPUs: no per-call
    weight casts); the sampler's arithmetic stays in fp32. `compile` compiles it with frozen
    weights (`sampling_network`), 20-30 s for a dit-s/2 on a 2-core CPU, so it pays off from a few
    hundred network calls. `network`, a `sampling_network(model, precision, compile)` built once, serves
    several calls without compiling again; with `compile`, every batch is then padded to
    `batch_size`, one shape for all calls.
    `spacing` places the DPM-Solvers' time points ("time" or "logsnr", see `dpm_time_points`);
    DDPM and DDIM always respace uniformly in time, as DiT does.
    """
    step_fn = sampler_fn(sampler, spacing)

    def one_batch(net: nn.Module, y: torch.Tensor, noise: PerImageNoise, on_step: Callable) -> torch.Tensor:
        return step_fn(guided_fn(net, y, cfg_scale, cfg_channels, precision), noise, steps, clip, on_step)

    return sample_batches(model, labels, seeds, one_batch, steps=steps, precision=precision, batch_size=batch_size,
                          device=device, desc=desc, compile=compile, network=network)


BatchFn = Callable[[nn.Module, torch.Tensor, PerImageNoise, Callable], torch.Tensor]


def sample_batches(model: nn.Module, labels: torch.Tensor, seeds: list[int], one_batch: BatchFn, *, steps: int,
                   precision: str, batch_size: int, device: str | torch.device, desc: str, compile: bool,
                   network: nn.Module | None) -> torch.Tensor:
    """The batching every sampler shares: (N, C, H, W) float32 on the CPU, one image per (label, seed).

    `one_batch(net, y, noise, on_step)` samples one batch: y (n,) labels on the device, `noise` the
    batch's per-image noise streams, `on_step` called after each of its `steps` steps; it returns
    (n, C, H, W). The network is `network`, or a `sampling_network(model, precision, compile)` built
    for this call; with `compile`, a short batch is padded to `batch_size` (one shape, no recompile).
    """
    if len(labels) != len(seeds):
        raise ValueError("one seed per label")
    shape = (model.in_channels, model.input_size, model.input_size)
    if network is None:
        model = sampling_network(model, precision, compile)
        batch_size = max(1, min(batch_size, len(labels)))   # a compile here serves this call only
    else:
        model = network
    # Under torchrun, batch b runs on rank b % world: every batch is the one a single process would
    # run (same images, same size), so the gathered result is the same bytes.
    starts = list(range(0, len(labels), batch_size))
    mine = starts[dist.rank()::dist.world()]
    outs = {}
    total = sum(len(labels[s:s + batch_size]) for s in mine) * steps
    with frozen_weights(compile), progress(total=total, desc=desc, unit="step") as bar:
        for s in mine:
            y, seed = labels[s:s + batch_size], seeds[s:s + batch_size]   # (n,) labels, n seeds
            n = len(y)
            if compile and n < batch_size:
                y, seed = _pad_batch(y, seed, batch_size)     # one batch shape: no recompile
            noise = PerImageNoise(seed, shape, device)
            x = one_batch(model, y.to(device), noise, lambda k=n: bar.update(k))
            outs[s] = x[:n].float().cpu()                                  # (n, C, H, W)
    if dist.world() > 1:
        for part in dist.all_gather_objects(outs):
            outs.update(part)
    return torch.cat([outs[s] for s in starts]) if starts else torch.empty(0, *shape)
