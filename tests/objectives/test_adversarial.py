"""ADD / LADD: discriminator heads get the taps they should on every adapter family, conditioning, user
backbones, the ADD distillation term, and the GAN stability guard through the trainer."""

import sys
import types

import pytest
import torch
from torch import nn

from fewstep import models
from fewstep.build import build_setup
from fewstep.config import load_config
from fewstep.objectives.discriminator import ConditionEmbedding, FeatureDiscriminator, load_backbone, log_snr_embedding
from fewstep.objectives.gan import feature_channels
from fewstep.training.trainer import NonFiniteError, Trainer

from .helpers import QUIET, ROOT

FAMILIES = {"unet2d": ("unet2d", {}), "sd15": ("unet2d_condition", {}), "sdxl": ("unet2d_condition", {"sdxl": True}),
            "sd3": ("sd3", {}), "flux": ("flux", {}), "sana": ("sana", {}), "dit": ("dit", {})}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_heads_read_the_taps_they_should(family):
    kind, options = FAMILIES[family]
    teacher, cond = models.tiny_denoiser(kind, **options)
    teacher.requires_grad_(False)  # as every objective holds it
    taps = list(teacher.tap_modules())
    embedding = ConditionEmbedding.of(teacher, 8)
    disc = FeatureDiscriminator(teacher, teacher.path, None, time_dim=16, cond_embedding=embedding, cond_dim=8)
    assert disc.taps[-1] == taps[-1] and set(disc.taps) <= set(taps)  # spread over depth, deepest included
    seen = {}
    for name, head in disc.heads.items():
        head.register_forward_hook(lambda _m, args, _o, name=name: seen.__setitem__(name, tuple(args[0].shape)))
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    t = torch.tensor([0.3, 0.7], dtype=torch.float64) * teacher.path.t_max
    logits = disc(x, t, cond)
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    for name in disc.taps:  # (B, C, H, W) on the patch / latent grid, C = the tap module's width
        shape = seen[name]
        assert len(shape) == 4 and shape[0] == 2 and shape[1] == feature_channels(teacher.tap_modules()[name])
    assert embedding is not None  # every tiny family is class- or text-conditional
    assert embedding(cond).shape == (2, 8)
    logits.sum().backward()
    assert all(p.grad is not None for p in disc.heads.parameters() if p.requires_grad)
    assert x.grad is not None and x.grad.abs().max() > 0  # the generator's gradient reaches its samples
    assert not any(name.startswith("backbone") for name in disc.state_dict())  # only heads are checkpointed


def test_time_and_condition_change_the_logits_once_trained():
    teacher, cond = models.tiny_denoiser("unet2d")
    disc = FeatureDiscriminator(teacher, teacher.path, ["mid"], time_dim=16,
                                cond_embedding=ConditionEmbedding.of(teacher, 8), cond_dim=8)
    with torch.no_grad():
        for p in disc.heads.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([300.0, 300.0], dtype=torch.float64)
    with torch.no_grad():
        base = disc(x, t, cond)
        assert (disc(x, t * 2, cond) - base).abs().max() > 1e-4
        other = {"class_labels": (cond["class_labels"] + 1) % 10}
        assert (disc(x, t, other) - base).abs().max() > 1e-4


def test_per_position_discriminator_puts_every_heads_positions_side_by_side():
    teacher, cond = models.tiny_denoiser("unet2d")
    pooled = FeatureDiscriminator(teacher, teacher.path, None, time_dim=16)
    per_position = FeatureDiscriminator(teacher, teacher.path, None, time_dim=16, per_position=True)
    per_position.load_state_dict(pooled.state_dict())
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([300.0, 600.0], dtype=torch.float64)
    positions = {}
    for name, head in per_position.heads.items():  # each head's feature grid
        head.register_forward_hook(lambda _m, args, _o, name=name: positions.__setitem__(name, args[0].shape[-2:]))
    with torch.no_grad():
        logits = per_position(x, t, cond)
        assert logits.shape == (2, sum(positions[n].numel() for n in per_position.taps))
        # each head's mean over its positions is its pooled logit; the pooled discriminator averages the heads
        means, start = [], 0
        for name in per_position.taps:
            means.append(logits[:, start:start + positions[name].numel()].mean(1))
            start += positions[name].numel()
        torch.testing.assert_close(torch.stack(means).mean(0), pooled(x, t, cond))


def test_log_snr_embedding_is_smooth_and_tells_noise_levels_apart():
    """The old frequencies 2^k pi / 32 reached 2^31 pi / 32: features that swung chaotically with the noise level."""
    log_snr = torch.linspace(-20, 20, 81)
    embedding = log_snr_embedding(log_snr, 64)
    nudged = log_snr_embedding(log_snr + 1e-3, 64)
    assert (nudged - embedding).norm(dim=1).max() < 1e-2
    distance = torch.cdist(embedding, embedding)
    assert distance[~torch.eye(81, dtype=torch.bool)].min() > 0.1  # levels 0.5 apart stay apart


def test_user_backbone_from_a_factory(monkeypatch):
    class Pooled(nn.Module):
        feature_channels = {"conv": 6}

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 6, 3, padding=1)

        def forward(self, x):
            return {"conv": self.conv(x)}

    module = types.ModuleType("my_backbones")
    module.make = Pooled
    monkeypatch.setitem(sys.modules, "my_backbones", module)
    backbone = load_backbone("my_backbones:make")
    assert not any(p.requires_grad for p in backbone.parameters())
    teacher, _ = models.tiny_denoiser("unet2d")
    disc = FeatureDiscriminator(backbone, teacher.path)
    assert disc(torch.randn(3, 4, 8, 8), None, None).shape == (3,)
    with pytest.raises(ValueError, match="package.module:factory"):
        load_backbone("nocolon")
    module.bad = nn.Identity
    with pytest.raises(TypeError, match="feature_channels"):
        load_backbone("my_backbones:bad")


def test_add_distillation_term_is_the_weighted_teacher_regression(tmp_path):
    config = load_config(ROOT / "configs" / "add_toy.yaml", [f"run.output_dir={tmp_path}", *QUIET])
    objective = build_setup(config).objective
    x = torch.randn(6, 2)
    g = torch.Generator().manual_seed(1)
    state = g.get_state()
    loss = objective.distillation_loss(x, None, g)
    g.set_state(state)
    t = 1e-3 + (1 - 1e-3) * (0.02 + 0.96 * torch.rand(6, generator=g, dtype=torch.float64))
    x_t = (1 - t).float()[:, None] * x + t.float()[:, None] * torch.randn(6, 2, generator=g)
    target = objective.teacher.mixture.posterior_mean(x_t.double(), 1 - t, t).float()
    expected = ((1 - t).float() ** 2 * (x - target).pow(2).mean(1)).mean()  # c(t) = alpha_t^2
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)


def test_stability_guard_reports_and_stops(tmp_path):
    """A generator that cannot learn (lr 1e-12) against a fast discriminator: the guard fires; with
    stop_on_collapse the trainer stops through its non-finite path, naming the guard."""
    over = [*QUIET, "run.max_steps=30", "optimizers.student.lr=1e-12", "optimizers.discriminator.lr=1e-2",
            "objective.discriminator.collapse_patience=5", "objective.discriminator.r1_weight=0"]
    config = load_config(ROOT / "configs" / "add_toy.yaml", [f"run.output_dir={tmp_path}", *over])
    setup = build_setup(config)
    trainer = Trainer(setup.objective, setup.data, config.run, config.optimizers)
    with pytest.warns(RuntimeWarning, match="GAN stability guard"):
        trainer.fit()
    assert any(row.get("gan/discriminator_wins") == 1.0 for row in trainer.history)
    config = load_config(ROOT / "configs" / "add_toy.yaml", [f"run.output_dir={tmp_path}/stop", *over,
                                                              "objective.discriminator.stop_on_collapse=true"])
    setup = build_setup(config)
    with pytest.raises(NonFiniteError, match="gan/discriminator_wins"), pytest.warns(RuntimeWarning):
        Trainer(setup.objective, setup.data, config.run, config.optimizers).fit()


def test_stability_guard_state_survives_resume(tmp_path):
    """The guard judges collapse against the diversity measured at the run's start: a resumed run keeps that
    value (and the discriminator-win streak) instead of re-measuring it on its first step after the resume."""
    over = [*QUIET, "run.max_steps=4", "run.checkpoint_every=2"]
    config = load_config(ROOT / "configs" / "add_toy.yaml", [f"run.output_dir={tmp_path}", *over])
    setup = build_setup(config)
    Trainer(setup.objective, setup.data, config.run, config.optimizers).fit()
    monitor = setup.objective.adversarial.monitor
    assert monitor.initial_diversity is not None and monitor.initial_diversity > 0
    config = load_config(ROOT / "configs" / "add_toy.yaml", [f"run.output_dir={tmp_path}", *over, "run.max_steps=6"])
    resumed = build_setup(config)
    trainer = Trainer(resumed.objective, resumed.data, config.run, config.optimizers)
    trainer.load("latest")
    assert resumed.objective.adversarial.monitor.initial_diversity == monitor.initial_diversity
    assert resumed.objective.adversarial.monitor.dominated_updates == monitor.dominated_updates
