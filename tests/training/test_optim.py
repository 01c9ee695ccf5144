"""The optimiser and weight-averaging maths: the EMA decay schedules (DiT's warm-up, EDM2's power EMA), fused AdamW."""
import dataclasses

import pytest
import torch

from minimaxdd.errors import UserError
from minimaxdd.training.optim import adamw, ema_decay, lr_at, power_ema_exponent
from minimaxdd.training.scratch import TrainConfig


def test_ema_decay_schedule():
    cfg = TrainConfig(data="digits", out="-")
    assert ema_decay(cfg, 1) == 2 / 11 and ema_decay(cfg, 10**6) == 0.9999
    assert ema_decay(dataclasses.replace(cfg, ema_warmup=False), 1) == 0.9999


def test_fused_adamw_steps_like_the_plain_one():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    start = [p.detach().clone() for p in a]
    fused, plain = adamw(a, lr=1e-2, weight_decay=0.1), torch.optim.AdamW(b, lr=1e-2, weight_decay=0.1)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    for _ in range(5):
        for ps, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            sum((p ** 2).sum() for p in ps).backward()
            opt.step()
    for p, q, p0 in zip(a, b, start):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        assert (p - p0).abs().min() > 1e-3          # every entry moved


def test_power_ema_exponent_has_the_asked_relative_std():
    for sigma_rel in (0.05, 0.10, 0.2):
        g = power_ema_exponent(sigma_rel)
        assert ((g + 1) / ((g + 2) ** 2 * (g + 3))) ** 0.5 == pytest.approx(sigma_rel, rel=1e-9)
    assert power_ema_exponent(0.10) == pytest.approx(6.94, abs=0.01)     # EDM2's gamma for sigma_rel 0.10
    with pytest.raises(UserError, match="ema_length must be in"):
        power_ema_exponent(0.5)


def test_power_ema_averages_the_whole_run_with_a_power_profile():
    cfg = TrainConfig(data="digits", out="-", ema_length=0.1)
    g = power_ema_exponent(0.1)
    assert ema_decay(cfg, 1) == 0.0                                   # the first step: EMA = the weights
    assert ema_decay(cfg, 100) == pytest.approx((1 - 1 / 100) ** (g + 1), rel=1e-12)
    # applied to a sequence 1..T, the EMA is the power-weighted mean sum t^g * t / sum t^g
    e, T = 0.0, 400
    for t in range(1, T + 1):
        d = ema_decay(cfg, t)
        e = d * e + (1 - d) * t
    w = torch.arange(1, T + 1, dtype=torch.float64) ** g
    assert e == pytest.approx(float((w * torch.arange(1, T + 1)).sum() / w.sum()), rel=2e-2)


def test_lr_ramps_linearly_over_its_fraction_of_the_planned_steps_then_holds():
    cfg = TrainConfig(data="digits", out="-", lr=1e-3, lr_warmup=0.1)
    assert [lr_at(cfg, s, 100) for s in (0, 4, 9, 10, 50)] == pytest.approx([1e-4, 5e-4, 1e-3, 1e-3, 1e-3])
    assert lr_at(dataclasses.replace(cfg, lr_warmup=0.0), 0, 100) == 1e-3
