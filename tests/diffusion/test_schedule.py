import math

import numpy as np
import pytest
import torch
from oracles import Oracle, targets

from minimaxdd.diffusion.schedule import Diffusion


def test_respacing_keeps_the_cumulative_alphas():
    full = Diffusion()
    d = Diffusion.respaced(50)
    assert len(d.timestep_map) == 50 and d.timestep_map[0] == 0 and d.timestep_map[-1] == 999
    assert np.allclose(d.np["alphas_cumprod"], full.np["alphas_cumprod"][d.timestep_map])
    assert np.allclose(Diffusion.respaced(1000).np["betas"], full.np["betas"])
    with pytest.raises(ValueError):
        Diffusion.respaced(0)

def test_forward_process_and_inverse():
    d = Diffusion()
    x0 = torch.randn(4, 3, 8, 8)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 500, 999])
    xt = d.q_sample(x0, t, noise)
    assert torch.allclose(d.predict_x0(xt, t, noise), x0, atol=1e-3)
    assert torch.allclose(d.predict_eps(xt, t, x0), noise, atol=1e-3)
    # at t = 999 the signal is almost gone: sqrt(alpha_bar) ~ 0.0064
    assert math.isclose(float(d.np["sqrt_acp"][999]), 0.0064, abs_tol=5e-4)

def _vb_by_hand(d: Diffusion, t: torch.Tensor, v: float) -> torch.Tensor:
    """The VB term (bits per dimension) when the predicted mean is the true posterior mean.

    The log-variance is frac * log(beta_t) + (1 - frac) * log(posterior var), frac = (v + 1) / 2. For t > 0
    the term is KL(q || p) between Gaussians with equal means; for t = 0 it is -log2 of the mass of a
    2/255-wide bin centred on the mean, with DiT's tanh approximation of the normal CDF.
    """
    frac = (v + 1) / 2
    out = []
    for step in t.tolist():
        lv_q = d.np["post_logvar"][step]
        lv_p = frac * d.np["log_betas"][step] + (1 - frac) * lv_q
        if step > 0:
            out.append(0.5 * (-1 + lv_p - lv_q + math.exp(lv_q - lv_p)) / math.log(2))
        else:
            z = (1 / 255) / math.exp(0.5 * lv_p)
            cdf = lambda u: 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))
            out.append(-math.log(cdf(z) - cdf(-z)) / math.log(2))
    return torch.tensor(out, dtype=torch.float32)

@pytest.mark.parametrize("learn_sigma", [False, True])
def test_training_losses(learn_sigma):
    d = Diffusion()
    tg = targets()
    model = Oracle(tg, learn_sigma, v=0.6)
    y = torch.tensor([0, 1, 2, 0])
    t = torch.tensor([0, 3, 400, 999])
    noise = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    terms = d.training_losses(model, tg[y], t, y, noise)
    assert torch.allclose(terms["mse"], torch.zeros(4), atol=1e-4)   # the oracle predicts epsilon exactly
    assert torch.allclose(terms["x0_hat"], tg[y], atol=1e-2)
    if learn_sigma:
        # the targets lie inside (-0.999, 0.999), so t = 0 is an inner bin; float32 limits t = 400 and 999
        torch.testing.assert_close(terms["vb"], _vb_by_hand(d, t, 0.6), rtol=1e-3, atol=1e-6)
        assert terms["vb"][1] > 1e-3   # a variance away from the posterior's costs something
        assert torch.allclose(terms["loss"], terms["mse"] + terms["vb"])
    else:
        assert "vb" not in terms and torch.equal(terms["loss"], terms["mse"])
