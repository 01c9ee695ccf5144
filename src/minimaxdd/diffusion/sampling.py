"""Sampling, written once for every formulation: `SAMPLERS`, `generate` and `denoise_from`.

A model is put behind the denoiser interface of its formulation (`denoisers.as_denoiser`), guided
(`denoisers.Guided`) and handed to a solver of `minimaxdd.diffusion.solvers` on a grid of noise levels
(`sigma_grid`). `SAMPLERS` names the solvers (the CLI's `--sampler` choices); each name is one algorithm
whatever the model. `generate` runs one batch by batch; every image has its own noise stream, seeded from
(seed, class, index), so image i of class c is drawn from the same noise whatever the batch size or the
order of generation.
"""
from __future__ import annotations

import contextlib
import copy
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from minimaxdd import distributed as dist
from minimaxdd.diffusion.denoisers import Denoiser, Guided, VPDenoiser, as_denoiser
from minimaxdd.diffusion.guides import Guides
from minimaxdd.diffusion.solvers import (
    ddpm_ancestral,
    dpm_solver,
    dpm_time_points,
    euler,
    heun,
    karras_sigmas,
    respaced_sigmas,
    step_sigmas,
)
from minimaxdd.precision import resolve_precision
from minimaxdd.runtime import compile_module, progress

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
        model = compile_module(model)   # attributes (num_classes, ...) pass through; frozen by `generate`
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


@dataclass(frozen=True)
class Sampler:
    """A named sampling algorithm: run(guided, noise, sigmas, on_step) -> x (N, C, H, W) at the grid's end.

    `formulations` it applies to; `default_steps` per formulation; `time_points`: on the DDPM formulation's
    "time" and "logsnr" spacings it visits `dpm_time_points` and stops at t = 0 (the DPM-Solvers), rather
    than the respaced steps and a last step to sigma 0 (DDPM, DDIM, Euler, Heun).
    """

    run: Callable[[Guided, PerImageNoise, torch.Tensor, Callable | None], torch.Tensor]
    formulations: tuple[str, ...]
    default_steps: dict[str, int]
    about: str
    time_points: bool = False


def _ode(solver: Callable) -> Callable:
    def run(guided: Guided, noise: PerImageNoise, sigmas: torch.Tensor, on_step: Callable | None) -> torch.Tensor:
        return solver(guided, float(sigmas[0]) * noise(), sigmas, on_step)   # x starts at sigma_max * noise
    return run


def _sde_dpm(guided: Guided, noise: PerImageNoise, sigmas: torch.Tensor, on_step: Callable | None) -> torch.Tensor:
    return dpm_solver(guided, float(sigmas[0]) * noise(), sigmas, on_step, noise=noise)


def _ancestral(guided: Guided, noise: PerImageNoise, sigmas: torch.Tensor, on_step: Callable | None) -> torch.Tensor:
    return ddpm_ancestral(guided.raw, noise, len(sigmas) - 1, guided.clip, on_step)


# Steps: the paper samples with 50 respaced DDPM steps (Gu et al. 2024, Sec. 4.1), as DiT does; on EDM models
# Heun 18 (35 network calls) is EDM's CIFAR-10 setting (Karras et al. 2022, Table 2; edm generate.py
# num_steps=18), Euler 35 spends the same 35 calls, DPM-Solver++(2M) 20 steps is the upper end of the 15-20
# its authors recommend (Lu et al. 2022, DPM-Solver++, Sec. 1 and 6).
_BOTH = ("ddpm", "edm")
ODE_SOLVERS = {"euler": euler, "heun": heun, "dpm-solver": dpm_solver}   # the deterministic ones (denoise_from)
SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler(_ancestral, ("ddpm",), {"ddpm": 50}, "ancestral DDPM with the learned variance (the paper's)"),
    "ddim": Sampler(_ode(euler), ("ddpm",), {"ddpm": 50}, "DDIM, eta 0: Euler's method on the respaced steps"),
    "euler": Sampler(_ode(euler), _BOTH, {"ddpm": 50, "edm": 35}, "Euler steps of the probability-flow ODE"),
    "heun": Sampler(_ode(heun), _BOTH, {"ddpm": 50, "edm": 18}, "EDM's Heun sampler (Algorithm 1)"),
    "dpm-solver": Sampler(_ode(dpm_solver), _BOTH, {"ddpm": 50, "edm": 20}, "DPM-Solver++(2M)", True),
    "sde-dpm-solver": Sampler(_sde_dpm, _BOTH, {"ddpm": 50, "edm": 20}, "SDE-DPM-Solver++(2M)", True),
}
DEFAULT_SAMPLER = {"ddpm": "ddpm", "edm": "heun"}
# The grid spacings: "time", each formulation's own time steps (DDPM: the training steps, uniform in t; EDM:
# Eq. 5 of Karras et al. 2022, whose t is sigma); "logsnr", DDPM training steps uniform in log-SNR; "karras",
# EDM's Eq. 5 on any model.
GRIDS = ("time", "logsnr", "karras")


def check_sampler(sampler: str, formulation: str, spacing: str = "time") -> str:
    """The grid ("time", "logsnr" or "karras") a sampler runs on for a model of `formulation`, an EDM model's
    "time" being "karras"; unknown or inapplicable choices are ValueErrors that name the choices."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    known = [name for name, s in SAMPLERS.items() if formulation in s.formulations]
    if formulation not in SAMPLERS[sampler].formulations:
        raise ValueError(f"sampler {sampler!r} does not apply to models of the {formulation} formulation; "
                         f"choose one of {', '.join(known)}")
    if spacing not in GRIDS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(GRIDS)}")
    if formulation == "edm":
        if spacing == "logsnr":
            raise ValueError("spacing 'logsnr' places DDPM training steps; an edm model samples on EDM's grid "
                             "(time or karras, the same)")
        return "karras"
    if sampler == "ddpm" and spacing != "time":
        raise ValueError(f"spacing {spacing!r} does not apply to ddpm, which respaces uniformly in time as DiT does")
    return spacing


def sigma_grid(denoiser: Denoiser, sampler: str, steps: int, spacing: str = "time") -> torch.Tensor:
    """The noise levels (float64, decreasing) `sampler` visits in `steps` steps on `denoiser`'s model.

    karras (and an EDM model's time): EDM's grid over the model's sigma range, each level rounded to one the
    model knows (a DDPM model knows its 1000 training levels; EDM does the same for iDDPM models), then 0.
    time / logsnr on DDPM models: see `Sampler.time_points`.
    """
    spacing = check_sampler(sampler, denoiser.formulation, spacing)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if spacing == "karras":
        grid = karras_sigmas(steps, *denoiser.sigma_range())
        rounded = torch.tensor([denoiser.round_sigma(float(s)) for s in grid], dtype=torch.float64)
        return torch.unique_consecutive(rounded) if isinstance(denoiser, VPDenoiser) else grid
    if SAMPLERS[sampler].time_points:
        return step_sigmas(dpm_time_points(steps, spacing), final_zero=False)
    if spacing == "logsnr":
        return step_sigmas(dpm_time_points(steps, spacing)[:-1], final_zero=True)
    return respaced_sigmas(steps)


def network_calls(sampler: str, steps: int) -> int:
    """How many network evaluations `sampler` makes in `steps` steps (per image, before guidance doubles them)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def default_steps(sampler: str, formulation: str) -> int:
    """The step count `sampler` takes on a model of `formulation` when none is given."""
    return SAMPLERS[sampler].default_steps[formulation]


def _pad_batch(y: torch.Tensor, seeds: list[int], rows: torch.Tensor, batch_size: int
               ) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """Pad a short batch to `batch_size` with copies of its last image (labels (n,) -> (batch_size,), and its
    seeds and row indices alike).

    A compiled network would recompile for one more batch shape; images do not interact in the
    network, so the padding leaves the others unchanged and is dropped after sampling."""
    n = len(y)
    return (torch.cat([y, y[-1:].expand(batch_size - n)]), list(seeds) + [seeds[-1]] * (batch_size - n),
            torch.cat([rows, rows[-1:].expand(batch_size - n)]))


# one_batch(net, y (n,), noise, on_step, rows (n,) the images' indices into the call's labels) -> (n, C, H, W)
BatchFn = Callable[[nn.Module, torch.Tensor, PerImageNoise, Callable, torch.Tensor], torch.Tensor]


def sample_batches(model: nn.Module, labels: torch.Tensor, seeds: list[int], one_batch: BatchFn, *, steps: int,
                   precision: str, batch_size: int, device: str | torch.device, desc: str, compile: bool,
                   network: nn.Module | None) -> torch.Tensor:
    """The batching every sampler shares: (N, C, H, W) float32 on the CPU, one image per (label, seed).

    `one_batch(net, y, noise, on_step, rows)` samples one batch: y (n,) labels on the device, `noise` the
    batch's per-image noise streams, `on_step` called after each of its `steps` steps, `rows` (n,) the
    images' indices into `labels` (for per-image inputs); it returns (n, C, H, W). The network is `network`,
    or a `sampling_network(model, precision, compile)` built for this call; with `compile`, a short batch is
    padded to `batch_size` (one shape, no recompile).
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
            rows = torch.arange(s, s + n)
            if compile and n < batch_size:
                y, seed, rows = _pad_batch(y, seed, rows, batch_size)     # one batch shape: no recompile
            noise = PerImageNoise(seed, shape, device)
            x = one_batch(model, y.to(device), noise, lambda k=n: bar.update(k), rows)
            outs[s] = x[:n].float().cpu()                                  # (n, C, H, W)
    if dist.world() > 1:
        for part in dist.all_gather_objects(outs):
            outs.update(part)
    return torch.cat([outs[s] for s in starts]) if starts else torch.empty(0, *shape)


@torch.no_grad()
def generate(model: nn.Module, labels: torch.Tensor, seeds: list[int], *, formulation: str = "ddpm",
             sampler: str | None = None, steps: int | None = None, spacing: str = "time", cfg_scale: float = 1.0,
             cfg_channels: int | None = None, clip: bool = False, precision: str = "fp32", batch_size: int = 64,
             device: str | torch.device = "cpu", desc: str = "sample", compile: bool = False,
             network: nn.Module | None = None, guides: Guides | None = None) -> torch.Tensor:
    """Sample one image (or latent) per (label, seed): (N, C, H, W) float32 on the CPU.

    `formulation` is the model's ("ddpm": the paper's epsilon-prediction DiT; "edm"); `sampler` and `steps`
    default to the formulation's (`DEFAULT_SAMPLER`, `Sampler.default_steps`); `spacing` places the noise
    levels (`GRIDS`, `sigma_grid`).
    `labels` are the network's class indices; the null class for guidance is model.num_classes;
    `cfg_channels` guides only the first k channels (DiT's quirk). `clip` clamps the result to [-1, 1]
    (pixel models) and, for DDPM models, each predicted x0 (DiT's clip_denoised).
    precision "bf16" runs a bf16 copy of the network (faster than autocast on CPUs: no per-call weight
    casts); the sampler's arithmetic stays in fp32. `compile` compiles it with frozen weights
    (`sampling_network`), 20-30 s for a dit-s/2 on a 2-core CPU, so it pays off from a few hundred network
    calls. `network`, a `sampling_network(model, precision, compile)` built once, serves several calls
    without compiling again; with `compile`, every batch is then padded to `batch_size`, one shape for all.
    `guides` (`minimaxdd.diffusion.guides.Guides`, per-image tensors aligned with `labels`): guidance on an
    interval of sigma, mode guidance, the deviation term; None: none of them (the same bytes as before they existed).
    """
    sampler = sampler or DEFAULT_SAMPLER.get(formulation, "")
    check_sampler(sampler, formulation, spacing)
    steps = default_steps(sampler, formulation) if steps is None else steps
    run = SAMPLERS[sampler].run

    def one_batch(net: nn.Module, y: torch.Tensor, noise: PerImageNoise, on_step: Callable,
                  rows: torch.Tensor) -> torch.Tensor:
        den = as_denoiser(net, formulation, precision)
        grid = sigma_grid(den, sampler, steps, spacing)
        mine = None if guides is None else guides.take(rows)
        x = run(Guided(den, y, cfg_scale, cfg_channels, clip, mine), noise, grid, on_step)
        for _ in range(steps - (len(grid) - 1)):   # levels that rounding merged: keep the progress count honest
            on_step()
        return x.clamp(-1, 1) if clip else x

    return sample_batches(model, labels, seeds, one_batch, steps=steps, precision=precision, batch_size=batch_size,
                          device=device, desc=desc, compile=compile, network=network)


@torch.no_grad()
def denoise_from(model: nn.Module, x0: torch.Tensor, labels: torch.Tensor, sigma: float, seeds: list[int], *,
                 formulation: str = "edm", sampler: str = "heun", steps: int = 18, cfg_scale: float = 1.0,
                 precision: str = "fp32", batch_size: int = 64, device: str | torch.device = "cpu") -> torch.Tensor:
    """Start from given images instead of pure noise (SDEdit, Meng et al. 2022; D4M's prototypes): x0 (N, C, H, W)
    in the model's space, noised to `sigma` (one noise stream per image seed) and sampled down the model's
    grid from there: `sigma` itself (rounded to a level the model knows), then the levels of
    `sigma_grid(steps)` below it. Returns (N, C, H, W) float32 on the CPU. A `sigma` at or above the grid's
    top is the ordinary sampler started from x0 + noise. ODE samplers only (heun, euler, dpm-solver)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if len(x0) != len(labels) or len(x0) != len(seeds):
        raise ValueError(f"x0, labels and seeds differ in length: {len(x0)}, {len(labels)}, {len(seeds)}")
    if sampler not in ODE_SOLVERS:
        raise ValueError(f"starting from given images needs an ODE sampler ({', '.join(ODE_SOLVERS)}), got {sampler!r}")
    den = as_denoiser(model, formulation, precision)
    sigma = den.round_sigma(float(sigma))
    grid = sigma_grid(den, sampler, steps, "karras")
    sigmas = torch.cat([torch.tensor([sigma], dtype=torch.float64), grid[grid < sigma]])
    solver, out = ODE_SOLVERS[sampler], []
    for i in range(0, len(x0), batch_size):
        y = labels[i:i + batch_size].to(device)                                     # (n,)
        noise = PerImageNoise(seeds[i:i + batch_size], tuple(x0.shape[1:]), device)()
        x = x0[i:i + batch_size].to(device).float() + sigma * noise                 # (n, C, H, W)
        out.append(solver(Guided(den, y, cfg_scale), x, sigmas).float().cpu())
    return torch.cat(out)
