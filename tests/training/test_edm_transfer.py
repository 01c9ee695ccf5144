"""The minimax terms moved to EDM (issue 29): the paper's noise levels and its terms-to-diffusion gradient ratio."""
import math

import pytest
import torch

from minimaxdd.diffusion.edm import EDM, P_MEAN, P_STD, ddpm_sigmas
from minimaxdd.diffusion.schedule import Diffusion
from minimaxdd.training.finetune import FinetuneConfig, formulation_for, minimax_step
from minimaxdd.training.minimax import scaled_gradient


def _term(x0_hat: torch.Tensor) -> torch.Tensor:
    """Any differentiable term on the clean-image estimate (a fixed direction and a square)."""
    w = torch.linspace(-1, 1, x0_hat[0].numel()).view_as(x0_hat[0])
    return (w * x0_hat).sum() + 0.3 * (x0_hat ** 2).sum()


@pytest.mark.parametrize("t", [0, 50, 250, 500, 800, 999])
def test_the_scale_restores_the_papers_gradient_ratio_at_every_level(t):
    """One estimate x0_hat at DDPM step t, produced once by an epsilon output (the paper) and once by an EDM
    output F (c_skip x + c_out F): the ratio |d term / d output| / |d diffusion loss / d output| is the paper's
    under EDM once the term's gradient is scaled by (sigma / c_out)^2, and smaller by that factor without it."""
    g = torch.Generator().manual_seed(t)
    ddpm, edm = Diffusion(), EDM()
    x0, noise = torch.rand(1, 3, 4, 4, generator=g) * 2 - 1, torch.randn(1, 3, 4, 4, generator=g)
    tt = torch.tensor([t])
    sigma = ddpm_sigmas()[t]
    # the paper: a network output eps_hat (the true noise plus an error), x0_hat from it, L_simple on eps
    eps_hat = (noise + 0.2 * torch.randn(noise.shape, generator=g)).requires_grad_()
    x_t = ddpm.q_sample(x0, tt, noise)
    x0_hat = ddpm.predict_x0(x_t, tt, eps_hat)
    diff = ((eps_hat - noise) ** 2).mean()
    paper = (torch.autograd.grad(_term(x0_hat), eps_hat, retain_graph=True)[0].norm()
             / torch.autograd.grad(diff, eps_hat, retain_graph=True)[0].norm())
    # EDM: x = x_t / sqrt(abar) = x0 + sigma n, and the F that gives the same estimate
    x = x0 + sigma * noise
    c_skip, c_out, _, _ = edm.precond(sigma)
    F = ((x0_hat.detach() - c_skip * x) / c_out).requires_grad_()
    D = c_skip * x + c_out * F
    assert torch.allclose(D, x0_hat, atol=1e-4 * max(1.0, float(sigma)))
    loss = edm.loss_weight(sigma) * ((D - x0) ** 2).mean()
    g_diff = torch.autograd.grad(loss, F, retain_graph=True)[0].norm()
    native = torch.autograd.grad(_term(D), F, retain_graph=True)[0].norm() / g_diff
    scaled = torch.autograd.grad(_term(scaled_gradient(D, edm.paper_term_scale(sigma.view(1)))), F,
                                 retain_graph=True)[0].norm() / g_diff
    assert math.isclose(float(scaled), float(paper), rel_tol=1e-3)
    assert math.isclose(float(paper / native), float(edm.paper_term_scale(sigma)), rel_tol=1e-3)
    # the transfer "paper": the paper's weighting on the diffusion loss and sigma / c_out on the term give F the
    # very gradients the paper's loss gives epsilon, each of them, not only their ratio
    ddpm_w = EDM(weighting="ddpm")
    loss = ddpm_w.loss_weight(sigma) * ((D - x0) ** 2).mean()
    g_diff_F = torch.autograd.grad(loss, F, retain_graph=True)[0]
    g_term_F = torch.autograd.grad(_term(scaled_gradient(D, ddpm_w.paper_output_scale(sigma.view(1)))), F)[0]
    g_diff_eps = torch.autograd.grad(diff, eps_hat, retain_graph=True)[0]
    g_term_eps = torch.autograd.grad(_term(x0_hat), eps_hat)[0]
    assert math.isclose(float(g_diff_F.norm()), float(g_diff_eps.norm()), rel_tol=1e-3)
    assert math.isclose(float(g_term_F.norm()), float(g_term_eps.norm()), rel_tol=1e-3)


def test_scaled_gradient_keeps_the_value_and_scales_each_samples_gradient():
    x = torch.randn(3, 2, 2, 2, requires_grad=True)
    y = scaled_gradient(x, torch.tensor([1.0, 10.0, 0.0]))
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad[:, 0, 0, 0], torch.tensor([1.0, 10.0, 0.0]))


def test_the_paper_levels_are_its_timesteps_mapped_to_sigma_and_the_lognormal_draw_is_unchanged():
    s = ddpm_sigmas()
    assert len(s) == 1000 and math.isclose(float(s[0]), 0.01, rel_tol=0.01) and 150 < float(s[-1]) < 160
    drawn = EDM(levels="ddpm").draw_level(4096, torch.Generator().manual_seed(0))
    assert torch.isin(drawn, s).all()
    assert 0.45 < float((drawn > 3).float().mean()) < 0.6          # half the paper's levels are above sigma 3
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(EDM().draw_level(64, g1), (P_MEAN + P_STD * torch.randn(64, generator=g2)).exp())
    with pytest.raises(ValueError, match="levels"):
        EDM(levels="uniform")
    with pytest.raises(ValueError, match="weighting"):
        EDM(weighting="uniform")


class _Net(torch.nn.Module):
    num_classes, in_channels, input_size = 3, 1, 4


@pytest.mark.parametrize("transfer, levels, weighting, scale", [
    ("paper", "ddpm", "ddpm", "paper_output_scale"), ("weight", "lognormal", "edm", "paper_term_scale"),
    ("native", "lognormal", "edm", None)])
def test_each_transfer_sets_the_levels_weighting_and_scale_under_edm_and_nothing_under_ddpm(transfer, levels,
                                                                                            weighting, scale):
    cfg = FinetuneConfig(ckpt="-", data="-", out="-", edm_transfer=transfer)
    edm = formulation_for(cfg, "edm")
    assert isinstance(edm, EDM) and (edm.levels, edm.weighting) == (levels, weighting)
    got = minimax_step(cfg, _Net(), [0, 1, 2], torch.device("cpu"), edm).grad_scale
    assert (got is None) if scale is None else (got == getattr(edm, scale))
    ddpm = formulation_for(cfg, "ddpm")
    assert isinstance(ddpm, Diffusion)
    assert minimax_step(cfg, _Net(), [0, 1, 2], torch.device("cpu"), ddpm).grad_scale is None


# ---- what the cosines compare (finetune.embedding)

def _step_with(embed):
    from minimaxdd.training.minimax import ClassMemory, MinimaxStep
    dim = 4 if embed is None else embed(torch.zeros(1, 1, 2, 2)).flatten(1).shape[1]
    return MinimaxStep("minimax", 1.0, 1.0, "matrix", ClassMemory(1, 4, dim), ClassMemory(1, 4, dim),
                       torch.zeros(1, dtype=torch.long), embed=embed)


def test_centred_cosines_see_what_the_mean_hides():
    """Two images that share a bright background are nearly parallel as pixels and opposed once centred."""
    from minimaxdd.training.loop import Batch
    base = torch.full((1, 1, 2, 2), 0.9)
    a, b = base.clone(), base.clone()
    a[0, 0, 0, 0], b[0, 0, 1, 1] = 0.1, 0.1        # the same background, the object in opposite corners
    mean = (a + b)[0] / 2
    for embed, div in ((None, 0.7), (lambda x: x - mean, -0.99)):
        step = _step_with(embed)
        batch = Batch(x0=a, labels=torch.zeros(1, dtype=torch.long), dropped=torch.zeros(1, dtype=torch.bool), step=0)
        step({"x0_hat": b}, batch)                   # fills the memories with b's prediction
        _, logs = step({"x0_hat": a.clone().requires_grad_()}, batch)
        assert (logs["div"] > div) if div > 0 else (logs["div"] < div)
        assert step.pred.data.shape[-1] == 4


def test_feature_cosines_run_through_the_reference_classifier_and_refuse_latent_models(monkeypatch):
    from minimaxdd.data.sources import load_dataset
    from minimaxdd.diffusion.codecs import PixelCodec
    from minimaxdd.errors import UserError
    from minimaxdd.evaluation.classifiers import build_model
    from minimaxdd.training import finetune as ft
    from minimaxdd.training.draws import make_targets
    ds = load_dataset("digits")
    net = build_model("convnet3", ds.channels, ds.num_classes, ds.size)
    monkeypatch.setattr(ft, "reference_classifier", lambda *a, **k: net)
    cfg = FinetuneConfig(ckpt="-", data="digits", out="-", embedding="feature")
    codec = PixelCodec(ds.channels, ds.size)
    targets = make_targets(codec, ds, list(range(10)))
    embed = ft.cosine_space(cfg, ds, targets, codec, torch.device("cpu"))
    x = targets.x[:3].clone().requires_grad_()
    e = embed(x)
    assert e.shape[0] == 3 and e.shape[1] > 16
    e.sum().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None for p in net.parameters())
    centred = ft.cosine_space(FinetuneConfig(ckpt="-", data="digits", out="-", embedding="centred"), ds, targets,
                              codec, torch.device("cpu"))
    assert torch.allclose(centred(targets.x).mean(0), torch.zeros(1, ds.size, ds.size), atol=1e-5)
    with pytest.raises(UserError, match="latent"):
        ft.cosine_space(cfg, ds, targets, object(), torch.device("cpu"))


def test_each_finetuning_variant_is_its_own_row():
    from minimaxdd.pipeline.config import DistillConfig, method_name
    cfg = DistillConfig(data="digits")
    assert method_name(cfg) == "minimax"
    f = cfg.finetune
    import dataclasses
    assert method_name(dataclasses.replace(cfg, finetune=dataclasses.replace(f, embedding="centred"))) == "minimax+centred"
    v = dataclasses.replace(cfg, finetune=dataclasses.replace(f, objective="simple", edm_transfer="paper"))
    assert method_name(v) == "simple+paper-terms"
