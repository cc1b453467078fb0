"""Score identity Distillation: SiD (Zhou et al. 2024, ICML, "Score identity Distillation: Exponentially Fast
Distillation of Pretrained Diffusion Models for One-Step Generation"), SiD-LSG (Zhou et al. 2025, ICLR, "Guided
Score identity Distillation for Data-Free One-Step Text-to-Image Generation", long and short guidance) and
SiDA (Zhou et al. 2025, ICLR, "Adversarial Score identity Distillation").

With x = G(z), x_t = a_t x + s_t eps, f_real / f_fake the teacher's / fake score's x0 predictions at x_t, the
generator minimises (SiD Algorithm 1, the alpha-weighted loss; gradients flow through x and through both
networks' inputs x_t, never into their weights)

    L_G = (f_real - f_fake) . ((f_real - x) - alpha (f_real - f_fake)) / sg(mean|x - f_real|)
        = (1 - alpha) ||f_real - f_fake||^2 + (f_real - f_fake) . (f_fake - x),   per sample over the same weight

while the fake score learns p_G by denoising score matching on sg(x) (shared with DMD: fake_score.py). It is
data-free: no real sample enters either loss (SiDA's discriminator is the exception). LSG: the fake score is
trained with CFG scale kappa_1 on its output and evaluated in L_G with kappa_2 = kappa_3, the teacher with
kappa_4 (the paper's cfg_train_fake, cfg_eval_fake, cfg_eval_real). SiDA adds DMD2's GAN head on the fake
score's encoder features (fewstep.objectives.gan), trained on real images.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ..diffusion import convert_prediction
from ..models.base import Denoiser
from . import gan
from .base import Batch, Objective
from .dmd import DistributionMatching, GANConfig, MatchingConfig, gan_settings, make_fake_score
from .fake_score import FakeScore
from .registry import register


def sid_weight(x: Tensor, real_x0: Tensor) -> Tensor:
    """SiD's per-sample normaliser 1 / sg(mean_{non-batch} |x - real_x0|), shaped to broadcast over x."""
    with torch.no_grad():
        return 1.0 / (x.float() - real_x0.float()).abs().mean(dim=tuple(range(1, x.ndim)), keepdim=True).clamp_min(1e-5)


def sid_loss(x: Tensor, real_x0: Tensor, fake_x0: Tensor, alpha: float) -> Tensor:
    """SiD's generator loss, mean over elements, weighted per sample by sid_weight."""
    x, real_x0, fake_x0 = x.float(), real_x0.float(), fake_x0.float()
    difference = real_x0 - fake_x0
    return (difference * ((real_x0 - x) - alpha * difference) * sid_weight(x, real_x0)).mean()


def sida_adversarial_loss(logits: Tensor, x: Tensor, real_x0: Tensor) -> Tensor:
    """SiDA's generator GAN term: -log D(x_t) per sample, over the same sid_weight as the SiD term (the reference
    code scales it to SiD's per-pixel sum, i.e. to sid_loss's per-element mean here), mean over the batch."""
    return (gan.generator_loss_per_sample(logits) * sid_weight(x, real_x0).flatten()).mean()


class ScoreIdentityDistillation(DistributionMatching):
    """SiD / SiD-LSG / SiDA: DMD's generator, fake score and sampler with SiD's generator loss."""

    divergence_hint = ("SiD diverged: lower optimizers.student.lr (SiD uses lr 1e-5 .. 5e-6 with Adam eps "
                       "1e-6 .. 1e-4), lower objective.alpha towards 1, or keep max_grad_norm set (the loss "
                       "backpropagates through both scores' inputs)")

    def __init__(self, student: Denoiser, teacher: Denoiser, fake_score: FakeScore, *, alpha: float = 1.2,
                 fake_guidance_scale: float = 1.0, fake_train_guidance_scale: float = 1.0, **kwargs):
        super().__init__(student, teacher, fake_score, **kwargs)
        self.alpha, self.fake_guidance_scale = alpha, fake_guidance_scale
        self.fake_train_guidance_scale = fake_train_guidance_scale

    def matching_loss(self, x: Tensor, batch: Batch, generator: torch.Generator,
                      input_times: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """SiD's term at one noise level per sample; x_t keeps its graph to x (unlike DMD's sg). SiDA: the GAN
        logits come from the same fake-score forward (its encoder is the discriminator's trunk)."""
        fake = self.fake_score
        assert fake is not None
        t = self.noise_times(len(x), generator, x.device)
        x_t = self.teacher.path.add_noise(x, self.noise_like(x, generator), t)
        real_x0 = self.teacher.predict(x_t, t, batch.cond, guidance_scale=self.guidance_scale)
        logits = None
        with fake.unwrapped():  # the fake score's weight gradients from this pass are discarded
            if self.gan_generator_weight and self.gan_time_range is None:
                raw, logits = fake.forward_with_logits(x_t, t, batch.cond, guidance_scale=self.fake_guidance_scale)
                fake_x0 = convert_prediction(raw, fake.prediction_type, "sample", x_t, t, fake.path)
            else:
                fake_x0 = fake.predict(x_t, t, batch.cond, guidance_scale=self.fake_guidance_scale)
        loss = sid_loss(x, real_x0, fake_x0, self.alpha)
        logs = {"sid_loss": loss.detach(), "sid/score_gap": (real_x0 - fake_x0).detach().abs().mean()}
        if logits is not None:  # SiDA: L_G = L_SiD + lambda_adv L_adv (the reference's 0.5 / 0.5 is lambda_adv = 1)
            gan_loss = sida_adversarial_loss(logits, x, real_x0)
            loss = loss + self.gan_generator_weight * gan_loss
            logs.update({"gan/g_loss": gan_loss.detach(), **gan.logit_logs("gan/g", None, logits)})
        return loss, logs

    def adversarial_loss(self, x: Tensor, batch: Batch, generator: torch.Generator) -> tuple[Tensor, Tensor] | None:
        """SiDA's GAN term is part of matching_loss (one shared forward at SiD's x_t); with gan.time_range it is
        DMD2's, at noise levels of its own (not in the SiDA paper)."""
        return None if self.gan_time_range is None else super().adversarial_loss(x, batch, generator)

    def fake_score_loss(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """Denoising score matching on G's samples with LSG's kappa_1 (and condition dropout, so the
        unconditional branch the guidance needs stays trained); SiDA's discriminator on the same forward."""
        return super().fake_score_loss(batch, generator, guidance_scale=self.fake_train_guidance_scale)


# ---- configuration and registration ----
class SiDConfig(MatchingConfig):
    """SiD: data-free, 1-step by default, alpha = 1.2, t up to t_max (SiD samples t in [0, t_max])."""

    name: Literal["sid"] = "sid"
    student_times: list[float] | None = None  # decreasing path times; None: [t_max]
    backward_simulation: bool = True
    alpha: float = 1.2
    time_range: tuple[float, float] = (0.02, 0.98)  # the t_max of SiD is time_range[1] (fraction of the path)
    fake_guidance_scale: float = 1.0  # kappa_2 = kappa_3: the fake score's CFG inside the generator loss
    fake_train_guidance_scale: float = 1.0  # kappa_1: the fake score's CFG when it is trained


class SiDLSGConfig(SiDConfig):
    """SiD-LSG: guidance on both scores (all kappas 1.5 by default: tune them per teacher) and 10% prompt
    dropout for the fake score, as the reference code's use_context_dropout_train_fake. Unlike the reference, which
    blanks the prompt before the generator samples, the dropped samples keep the generator's condition and only the
    fake score's is nulled: its unconditional branch then learns the generator's marginal over conditions, the
    counterpart of the teacher's unconditional score (the generator loss never samples the null condition)."""

    name: Literal["sid_lsg"] = "sid_lsg"  # type: ignore[assignment]
    alpha: float = 1.0  # the SiD-LSG reference scripts' alpha (plain SiD's is 1.2)
    guidance_scale: float = 1.5  # kappa_4: the teacher's CFG inside the generator loss
    fake_guidance_scale: float = 1.5
    fake_train_guidance_scale: float = 1.5
    fake_cond_dropout: float = 0.1


class SiDAConfig(SiDConfig):
    """SiDA: SiD plus the adversarial term on the fake score's encoder features, with real images. The generator
    weight 1 is the reference's equal halves; the discriminator weight is relative to the fake score's per-element
    denoising loss (the reference adds a per-sample D loss to a per-pixel sum: about 1/pixels of it)."""

    name: Literal["sida"] = "sida"  # type: ignore[assignment]
    gan: GANConfig = GANConfig(generator_weight=1.0, discriminator_weight=0.01)


def _build_sid(cfg: SiDConfig, student: Denoiser, teacher: Denoiser) -> Objective:
    return ScoreIdentityDistillation(
        student, teacher, make_fake_score(cfg, student, teacher), alpha=cfg.alpha,
        fake_guidance_scale=cfg.fake_guidance_scale, fake_train_guidance_scale=cfg.fake_train_guidance_scale,
        fake_cond_dropout=cfg.fake_cond_dropout, student_times=cfg.student_times, guidance_scale=cfg.guidance_scale,
        time_range=cfg.time_range, time_shift=cfg.time_shift, fake_score_updates=cfg.fake_score_updates,
        backward_simulation=cfg.backward_simulation, **gan_settings(cfg.gan))


register("sid", SiDConfig, _build_sid)
register("sid_lsg", SiDLSGConfig, _build_sid)
register("sida", SiDAConfig, _build_sid)
