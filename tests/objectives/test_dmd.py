"""DMD / DMD2: the generator gradient against its written-out formula, TTUR through the trainer, backward
simulation, the LoRA fake score, the GAN losses, regression pairs, and the exact-toy margin over the teacher."""

import copy
import runpy

import pytest
import torch
import torch.nn.functional as F

from fewstep.build import build_setup
from fewstep.config import ConfigError, load_config
from fewstep.diffusion import FlowPath
from fewstep.objectives import Batch
from fewstep.objectives import gan
from fewstep.objectives.dmd import DistributionMatching, dmd_gradient, pairwise_diversity, surrogate_loss
from fewstep.objectives.fake_score import FakeScore, build_fake_score
from fewstep.objectives.sid import ScoreIdentityDistillation
from fewstep.sampling import sample_ode
from fewstep.toy import GaussianMixtureDenoiser, ToyStudent, ring_mixture, sliced_wasserstein
from fewstep.training.trainer import Trainer

from .helpers import QUIET, ROOT


def perturbed(module: torch.nn.Module, seed: int, scale: float = 0.3) -> torch.nn.Module:
    """A non-trivial network: re-draw the zero-initialised toy head."""
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        module.head.weight.copy_(torch.randn(module.head.weight.shape, generator=g) * scale)
        module.head.bias.copy_(torch.randn(module.head.bias.shape, generator=g) * scale)
    return module


def toy_parts(num_classes: int = 0):
    teacher = GaussianMixtureDenoiser(ring_mixture(num_classes=num_classes), FlowPath())
    student = perturbed(ToyStudent(teacher, hidden=32, depth=2), seed=1)
    fake = build_fake_score(teacher, ToyStudent(teacher, hidden=32, depth=2))
    perturbed(fake.network, seed=2)
    return teacher, student, fake


def teacher_cfg_x0(mixture, x_t, t, labels, w):
    """The exact real score with CFG, written out: u + w (c - u) of the mixture's posterior means."""
    a, s = 1 - t, t
    cond = mixture.posterior_mean(x_t.double(), a, s, labels)
    uncond = mixture.posterior_mean(x_t.double(), a, s, torch.full_like(labels, mixture.num_classes))
    return uncond + w * (cond - uncond)


def test_surrogate_gradient_is_the_weighted_score_difference():
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    real, fake = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    surrogate_loss(x, dmd_gradient(x.detach(), real, fake)).backward()
    weight = 1 / (x.detach() - real).abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(x.grad, (fake - real) * weight / x.numel())


def test_generator_gradient_matches_formula_through_the_objective():
    teacher, student, fake = toy_parts(num_classes=2)
    objective = DistributionMatching(student, teacher, fake, guidance_scale=3.0, time_range=(0.1, 0.9))
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    x = (torch.randn(6, 2) * 2).requires_grad_(True)
    batch = Batch(torch.zeros(6, 2), {"class_labels": labels})
    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    loss, _ = objective.matching_loss(x, batch, g)
    loss.backward()
    # the same draws, in the same order, then the formula with the exact teacher
    g.set_state(state)
    u = torch.rand(6, generator=g, dtype=torch.float64)
    t = 1e-3 + (1 - 1e-3) * (0.1 + 0.8 * u)
    eps = torch.randn(6, 2, generator=g)
    x_t = (1 - t).float()[:, None] * x.detach() + t.float()[:, None] * eps
    real = teacher_cfg_x0(teacher.mixture, x_t, t, labels, 3.0).float()
    with torch.no_grad():
        fake_x0 = fake(x_t, t, {"class_labels": labels})
    expected = (fake_x0 - real) / (x.detach() - real).abs().mean(1, keepdim=True) / x.numel()
    torch.testing.assert_close(x.grad, expected, rtol=1e-4, atol=1e-6)
    assert expected.abs().max() > 1e-3  # the fake score differs from the real one: a non-trivial check


def test_backward_simulated_inputs_follow_the_students_own_trajectory():
    teacher, student, fake = toy_parts()
    times = [1.0, 0.75, 0.5, 0.25]
    objective = DistributionMatching(student, teacher, fake, student_times=times)
    batch = Batch(ring_mixture().sample(32, torch.Generator().manual_seed(0)))
    x_t, t = objective.generator_inputs(batch, torch.Generator().manual_seed(3))
    # reference: the student's multi-step sampler written out, with the same seeded draws
    g = torch.Generator().manual_seed(3)
    index = torch.randint(0, 4, (32,), generator=g)
    x = torch.randn(32, 2, generator=g) * 1.0  # sigma(t_max) = 1 on the flow path
    states = [x]
    with torch.no_grad():
        for j in range(int(index.max())):
            x0 = student(x, torch.full((32,), times[j], dtype=torch.float64))
            x = (1 - times[j + 1]) * x0 + times[j + 1] * torch.randn(32, 2, generator=g)
            states.append(x)
    expected = torch.stack(states)[index, torch.arange(32)]
    torch.testing.assert_close(x_t, expected)
    torch.testing.assert_close(t, torch.tensor(times, dtype=torch.float64)[index])
    assert len(set(index.tolist())) == 4
    # without backward simulation the later steps see noised real data instead
    objective.backward_simulation = False
    x_real, _ = objective.generator_inputs(batch, torch.Generator().manual_seed(3))
    later = index > 0
    torch.testing.assert_close(x_real[~later], expected[~later])
    assert (x_real[later] - expected[later]).abs().min() > 1e-4


def test_two_time_scale_ratio_and_learning_rates_are_honoured(tmp_path):
    config = load_config(ROOT / "configs" / "dmd2_toy.yaml", [
        f"run.output_dir={tmp_path}", *QUIET, "run.max_steps=2", "objective.fake_score_updates=3",
        "optimizers.student.lr=1e-3", "optimizers.fake_score.lr=7e-3", "data.batch_size=16"])
    setup = build_setup(config)
    trainer = Trainer(setup.objective, setup.data, config.run, config.optimizers)
    fake_before = copy.deepcopy(setup.objective.fake_score.state_dict())
    trainer.fit()
    steps = {name: {int(s["step"]) for s in opt.state.values()} for name, opt in trainer.optimizers.items()}
    assert steps == {"student": {2}, "fake_score": {6}}
    assert trainer.optimizers["student"].param_groups[0]["lr"] == 1e-3
    assert trainer.optimizers["fake_score"].param_groups[0]["lr"] == 7e-3
    assert any((v != fake_before[k]).any() for k, v in setup.objective.fake_score.state_dict().items())
    assert {"fake_score_loss", "dmd_loss", "diversity", "grad_norm/student", "grad_norm/fake_score",
            "gan/d/logit_real", "gan/g/logit_fake"} <= set(trainer.history[-1])


def test_lora_fake_score_is_the_teacher_plus_an_adapter():
    from fewstep import models

    teacher, _ = models.tiny_denoiser("unet2d")
    pure = copy.deepcopy(teacher)
    fake = FakeScore.lora_on(teacher, rank=2)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([300.0, 700.0])
    cond = {"class_labels": torch.tensor([1, 2])}
    with torch.no_grad():
        for p in fake.adapter_parameters:
            p.add_(0.05 * torch.randn_like(p))
        torch.testing.assert_close(teacher(x, t, cond), pure(x, t, cond))  # the real score is untouched
        assert (fake(x, t, cond) - pure(x, t, cond)).abs().max() > 1e-4
    trainable = {id(p) for p in fake.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in fake.adapter_parameters}  # no second copy of the network
    assert all(k.startswith("adapter_parameters.") for k in fake.state_dict())
    loss, _ = fake.denoising_loss(x, torch.randn_like(x), t, cond)
    loss.backward()
    assert all(p.grad is not None for p in fake.adapter_parameters)
    assert all(p.grad is None for n, p in teacher.model.named_parameters() if "lora_" not in n)


def test_gan_losses_are_the_non_saturating_ones():
    real, fake = torch.randn(5), torch.randn(5)
    ones, zeros = torch.ones(5), torch.zeros(5)
    bce = F.binary_cross_entropy_with_logits
    torch.testing.assert_close(gan.discriminator_loss(real, fake), bce(real, ones) + bce(fake, zeros))
    torch.testing.assert_close(gan.generator_loss(fake), bce(fake, ones))


def test_pairwise_diversity_is_mean_pairwise_distance():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])
    assert abs(float(pairwise_diversity(x)) - (5 + 4 + 3) / 3 / 2 ** 0.5) < 1e-6
    assert float(pairwise_diversity(torch.zeros(4, 2))) == 0.0


def test_diagnostics_give_generator_real_and_fake_images():
    teacher, student, fake = toy_parts()
    objective = DistributionMatching(student, teacher, fake)
    out = objective.diagnostics(Batch(torch.zeros(4, 2)), torch.Generator().manual_seed(0))
    assert set(out) == {"generator", "noisy", "real_score_x0", "fake_score_x0"}
    assert all(v.shape == (4, 2) for v in out.values())
    assert (out["real_score_x0"] - out["fake_score_x0"]).abs().max() > 1e-3


def test_regression_pairs_script_and_loss(tmp_path):
    pairs = tmp_path / "pairs.safetensors"
    script = runpy.run_path(str(ROOT / "scripts" / "make_dmd_pairs.py"), run_name="make_dmd_pairs")
    assert script["main"](["--config", str(ROOT / "configs" / "dmd_toy.yaml"), "--out", str(pairs), "--num", "64",
                           "--steps", "8"]) == 0
    config = load_config(ROOT / "configs" / "dmd_toy.yaml", [f"run.output_dir={tmp_path}", *QUIET,
                                                             f"objective.regression_pairs={pairs}"])
    setup = build_setup(config)
    objective = setup.objective
    assert objective.regression_noise.shape == (64, 2)
    torch.testing.assert_close(objective.regression_sample[:4],
                               sample_ode(setup.teacher, objective.regression_noise[:4], 8))
    g = torch.Generator().manual_seed(0)
    loss = objective.regression_loss(g, 16)  # 16 random pairs per generator step
    idx = torch.randint(0, 64, (16,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = setup.student(objective.regression_noise[idx], torch.ones(16, dtype=torch.float64))
    torch.testing.assert_close(loss, (x - objective.regression_sample[idx]).pow(2).mean())


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="objective.time_range"):
        load_config(ROOT / "configs" / "dmd2_toy.yaml", ["objective.time_range=[0.9,0.1]"])
    with pytest.raises(ConfigError, match="objective.student_times"):
        load_config(ROOT / "configs" / "dmd2_toy.yaml", ["objective.student_times=[0.5,1.0]"])
    with pytest.raises(ConfigError, match="objective.gan.time_range"):
        load_config(ROOT / "configs" / "dmd2_toy.yaml", ["objective.gan.time_range=[0.3,1.5]"])


@pytest.mark.parametrize("recipe,steps,margin", [("dmd_toy.yaml", 1, 0.5), ("dmd2_toy.yaml", 2, 0.3)])
def test_dmd_student_beats_teacher_at_equal_steps_on_the_exact_toy(recipe, steps, margin, tmp_path):
    """The recipes at two thirds of their budget (200 generator updates, 3 fake-score updates each): the teacher's
    1-2 step Euler samples collapse to the data mean, the students land on the ring."""
    config = load_config(ROOT / "configs" / recipe, [f"run.output_dir={tmp_path}", *QUIET, "run.max_steps=200",
                                                     "objective.fake_score_updates=3"])
    setup = build_setup(config)
    mixture = setup.teacher.mixture
    noise = torch.randn(1500, 2, generator=torch.Generator().manual_seed(0))
    data = mixture.sample(1500, torch.Generator().manual_seed(1))
    Trainer(setup.objective, setup.data, config.run, config.optimizers).fit()
    student = sliced_wasserstein(setup.objective.sample(noise, steps, None, torch.Generator().manual_seed(2)), data)
    teacher = sliced_wasserstein(sample_ode(setup.teacher, noise, steps), data)
    assert student < margin * teacher, (student, teacher)


def test_gan_head_trains_at_its_own_learning_rate(tmp_path):
    """gan.head_lr_scale: the fake score's optimiser holds the discriminator head as its own group at lr x scale
    (through a warm-up schedule too), the rest of the fake score at lr; every trainable weight is in one group."""
    config = load_config(ROOT / "configs" / "dmd2_toy.yaml", [f"run.output_dir={tmp_path}", "run.max_steps=3",
                                                               "objective.gan.head_lr_scale=20", *QUIET])
    setup = build_setup(config)
    trainer = Trainer(setup.objective, setup.data, config.run, config.optimizers)
    trainer.fit()
    fake = setup.objective.fake_score
    trunk, head = trainer.optimizers["fake_score"].param_groups
    assert {id(p) for p in head["params"]} == {id(p) for p in fake.head.parameters()}
    assert len(trunk["params"]) + len(head["params"]) == sum(p.requires_grad for p in fake.parameters())
    assert head["lr"] == pytest.approx(20 * trunk["lr"]) and trunk["lr"] > 0
    assert len(trainer.optimizers["student"].param_groups) == 1


def test_gan_time_range_is_refused_where_the_gan_term_has_noise_levels_of_its_own():
    with pytest.raises(ConfigError, match="gan.time_range.*dm_time_range"):
        load_config(ROOT / "configs" / "dmd_decoupled_toy.yaml", ["objective.gan.time_range=[0.02,0.4]"])


@pytest.mark.parametrize("objective_class,gan_range,plain_passes", [
    (DistributionMatching, None, 1), (DistributionMatching, (0.1, 0.3), 2),
    (ScoreIdentityDistillation, None, 0), (ScoreIdentityDistillation, (0.1, 0.3), 2)])
def test_gan_terms_draw_their_own_noise_levels(objective_class, gan_range, plain_passes):
    """gan.time_range: the discriminator's real and generated logits and the generator's GAN term all come from
    noise levels inside it (own fake-score forwards); unset, they share the fake score's range, the denoising
    forward, and for SiDA the SiD term's forward."""
    teacher, student, fake = toy_parts()
    fake.add_discriminator()
    objective = objective_class(student, teacher, fake, gan_generator_weight=0.1, gan_discriminator_weight=1.0,
                                time_range=(0.5, 0.9), gan_time_range=gan_range)
    seen = []
    forward = fake.forward_with_logits

    def recording(x_t, t, *args, **kwargs):
        seen.append(t.detach().clone())
        return forward(x_t, t, *args, **kwargs)

    fake.forward_with_logits = recording
    every_forward = []
    plain_forward = fake.forward
    fake.forward = lambda x_t, t, *args: every_forward.append(t.detach().clone()) or plain_forward(x_t, t, *args)
    batch = Batch(x0=torch.randn(64, 2, generator=torch.Generator().manual_seed(0)), cond=None)
    g = torch.Generator().manual_seed(1)
    _, logs = objective.fake_score_loss(batch, g)
    assert "gan/d_loss" in logs
    _, logs = objective.generator_loss(batch, g)
    assert "gan/g_loss" in logs
    lo, hi = gan_range or (0.5, 0.9)
    assert len(seen) == 3  # D on generated samples (its own pass, or the denoising one), D on real ones, G term
    for t in seen:
        assert t.min() >= lo - 1e-6 and t.max() <= hi + 1e-6 and t.max() - t.min() > 0.1 * (hi - lo)
    denoising_times = [t for t in every_forward if not any(t is s or torch.equal(t, s) for s in seen)]
    # passes without logits (the DMD / SiD term's, the denoising one) stay on the fake score's own range
    assert len(denoising_times) == plain_passes
    assert all(t.min() >= 0.5 - 1e-6 for t in denoising_times)

