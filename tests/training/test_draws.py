"""What each training step draws: generators independent of resumption, DDPM timesteps or EDM sigmas."""
import torch

from minimaxdd.diffusion.codecs import build_codec
from minimaxdd.training.draws import draw_step, make_targets, step_generator
from minimaxdd.training.scratch import TrainConfig


def test_step_generator_depends_only_on_seed_step_and_stream():
    draw = lambda *a: torch.randint(0, 2**31, (4,), generator=step_generator(*a)).tolist()   # noqa: E731
    assert draw(0, 5) == draw(0, 5)
    assert len({str(draw(0, 5)), str(draw(1, 5)), str(draw(0, 6)), str(draw(0, 5, 1))}) == 4


def test_edm_draws_sigmas_where_ddpm_draws_timesteps(digits):
    from minimaxdd.diffusion.edm import EDM
    from minimaxdd.diffusion.schedule import Diffusion

    codec = build_codec("pixel", 1, 8)
    targets = make_targets(codec, digits, list(range(10)))
    cfg = TrainConfig(data="digits", out="-", batch=16, flip=False)
    x0, _, _, _, t, noise, aug = draw_step(targets, cfg, 0, len(targets) // 16, 10, Diffusion())
    x0e, _, _, _, s, noise_e, _ = draw_step(targets, cfg, 0, len(targets) // 16, 10, EDM())
    assert t.dtype == torch.int64 and s.dtype == torch.float32 and (s > 0).all()
    assert torch.equal(x0, x0e)                     # the same images; the level and the noise are drawn after
    assert aug.shape == (16, 0)                     # no augmentation: no labels
    # augmentation is drawn after everything else: the same levels and noise, augmented images with their labels
    import dataclasses
    x0a, _, _, _, sa, noise_a, auga = draw_step(targets, dataclasses.replace(cfg, augment=1.0), 0, len(targets) // 16,
                                            10, EDM())
    assert torch.equal(sa, s) and torch.equal(noise_a, noise_e) and auga.shape == (16, 6)
    assert not torch.equal(x0a, x0e) and (auga != 0).any(1).all()
    g = step_generator(0, 0)
    torch.rand(16, generator=g)                      # label dropout
    assert torch.equal(s, (torch.randn(16, generator=g) * 1.2 - 1.2).exp())
