import functools
import math

import numpy as np
import pytest
import torch
from oracles import MU, S, exact_D

from minimaxdd.diffusion.edm import RHO, SIGMA_MAX, SIGMA_MIN
from minimaxdd.diffusion.sampling import network_calls
from minimaxdd.diffusion.solvers import dpm_solver, dpm_time_points, euler, heun, karras_sigmas

SOLVERS = {"heun": heun, "euler": euler, "dpm-solver": dpm_solver}


def sigma_steps(steps):
    return karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)

def test_sigma_steps_follow_eq5():
    sig = sigma_steps(18)
    assert sig.shape == (19,) and sig[-1] == 0
    assert math.isclose(sig[0], SIGMA_MAX, rel_tol=1e-12) and math.isclose(sig[-2], SIGMA_MIN, rel_tol=1e-12)
    assert bool((sig[1:] < sig[:-1]).all())
    i = torch.arange(18, dtype=torch.float64)
    closed = (SIGMA_MAX ** (1 / RHO) + i / 17 * (SIGMA_MIN ** (1 / RHO) - SIGMA_MAX ** (1 / RHO))) ** RHO
    assert torch.allclose(sig[:-1], closed, rtol=1e-12)
    assert torch.equal(sigma_steps(1), torch.tensor([SIGMA_MAX, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError):
        sigma_steps(0)

def test_dpm_time_points():
    for spacing in ("time", "logsnr"):
        ts = dpm_time_points(20, spacing)
        assert len(ts) == 21 and ts[0] == 999 and ts[-1] == 0 and np.all(np.diff(ts) < 0)
    # log-SNR points crowd near t = 0, where lambda moves fast; at 500 steps some round together
    lsnr = dpm_time_points(20, "logsnr")
    assert lsnr[-2] < dpm_time_points(20, "time")[-2] / 4
    many = dpm_time_points(500, "logsnr")
    assert len(many) < 501 and np.all(np.diff(many) < 0) and many[-1] == 0
    with pytest.raises(ValueError, match="spacing"):
        dpm_time_points(20, "karras")

def _oracle_run(sampler, steps, n=20_000, dtype=torch.float32):
    """Samples of N(MU, S^2) by `sampler` with the exact D*, and the exact ODE solution from the same noise."""
    z = torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(5)).to(dtype)
    sig = sigma_steps(steps)
    calls = []

    def fn(x, sigma):
        calls.append(sigma)
        return exact_D(x, sigma)

    out = sampler(fn, float(sig[0]) * z, sig)
    # the probability-flow ODE of Gaussian data: x(sigma) - mu scales with sqrt(s^2 + sigma^2)
    exact = MU + (SIGMA_MAX * z - MU) * S / math.sqrt(S ** 2 + SIGMA_MAX ** 2)
    return out, exact, len(calls)

def test_heun_is_algorithm_1_on_the_gaussian_ode():
    """On Gaussian data the ODE is linear, dx/dsigma = a(sigma) (x - mu) with a = sigma / (s^2 + sigma^2), so
    Heun's output is mu + K (x_T - mu), K the product of its per-step factors, worked out here by hand."""
    sig = [float(v) for v in sigma_steps(18)]
    a = lambda t: t / (S ** 2 + t ** 2)                                                  # noqa: E731
    K = 1.0
    for t, t_next in zip(sig[:-1], sig[1:]):
        h = t_next - t
        euler_factor = 1 + h * a(t)
        K *= 1 + h / 2 * (a(t) + a(t_next) * euler_factor) if t_next > 0 else euler_factor
    z = torch.randn(1000, 1, 1, 1, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    out = heun(lambda x, s: exact_D(x, s), SIGMA_MAX * z, sigma_steps(18))
    assert torch.allclose(out, MU + K * (SIGMA_MAX * z - MU), rtol=1e-10, atol=1e-12)
    # its discretisation error: the rho = 7 grid halves sigma per step where sigma ~ s, and Heun overshoots there
    assert 1.04 < K / (S / math.hypot(S, SIGMA_MAX)) < 1.07

# (sampler, steps, bound on |std / exact std - 1|): the bounds sit above the measured truncation errors of each
# grid on N(0.3, 0.4^2) (heun 18: +5.9%, heun 35: +1.4%, euler 100: -2.9%, dpm-solver 20: +5.2%, dpm-solver 35: +1.5%).
ORACLE_CASES = [("heun", 18, 0.07), ("heun", 35, 0.02), ("euler", 100, 0.035), ("dpm-solver", 20, 0.06),
                ("dpm-solver", 35, 0.02)]

@pytest.mark.parametrize("name,steps,tol", ORACLE_CASES)
def test_samplers_map_noise_to_the_gaussian_data(name, steps, tol):
    out, exact, calls = _oracle_run(SOLVERS[name], steps)
    assert calls == network_calls(name, steps)
    assert abs(out.mean().item() - exact.mean().item()) < 0.005 * S       # the mean is the ODE's fixed point
    assert abs(out.std().item() / exact.std().item() - 1) < tol
    # against the data itself, with the sampling error of 20000 draws (about 0.7% in mean and std)
    assert abs(out.mean().item() - MU) < 0.03 * S
    assert abs(out.std().item() / S - 1) < tol + 0.01

def test_heun_beats_euler_at_the_same_steps():
    h, exact, _ = _oracle_run(heun, 18)
    e, _, _ = _oracle_run(euler, 18)
    assert (h - exact).abs().max() < 0.5 * (e - exact).abs().max()
    assert abs(h.std().item() - S) < abs(e.std().item() - S)

def test_on_step_counts_steps():
    for sampler in (heun, euler, dpm_solver):
        ticks = []
        sampler(lambda x, s: exact_D(x, s), torch.ones(2, 1, 1, 1), sigma_steps(5), functools.partial(ticks.append, 1))
        assert len(ticks) == 5
