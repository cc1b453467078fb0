"""sCM with a distribution-level regulariser on the student's own few-step samples.

* rCM (Zheng et al. 2025, "Large Scale Diffusion Distillation via Score-Regularized Continuous-Time Consistency"):
  sCM's loss plus DMD's reverse-divergence term, a fake score trained on student samples and the generator's
  inputs backward-simulated (fewstep.objectives.dmd, shared, not rewritten).
* SANA-Sprint (Chen et al. 2025, §3.3): sCM's loss plus LADD's adversarial term, discriminator heads on the
  frozen teacher's features (fewstep.objectives.adversarial).

Student loss = L_sCM + weight * L_regulariser(G(z)); the regulariser's own networks (fake score, discriminator
heads) train in their own phases. The student's x0 prediction at native times IS its consistency function
(TrigFlow is a reparameterisation of the same network), so the regulariser's generator needs no TrigFlow code.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..config import StrictModel
from ..models.base import Denoiser
from .adversarial import AdversarialDistillation, DiscriminatorConfig, make_adversarial
from .base import Batch, Objective, Phase
from .dmd import DistributionMatching, FakeScoreConfig, GANConfig, gan_settings, make_fake_score
from .generator import FewStepGenerator
from .registry import register
from .scm import LOSS_KEYS, ContinuousConsistencyDistillation, SCMConfig, SCMLoss


class RegularizedConsistency(ContinuousConsistencyDistillation):
    """sCM + weight x (a FewStepGenerator objective's generator loss), e.g. rCM or sCM + LADD."""

    def __init__(self, student: Denoiser, teacher: Denoiser, loss: SCMLoss, regularizer: FewStepGenerator, *,
                 regularizer_weight: float = 1.0, **kwargs):
        super().__init__(student, teacher, loss, **kwargs)
        if regularizer.student is not student:
            raise ValueError("the regulariser must train the same student")
        self.regularizer, self.regularizer_weight = regularizer, regularizer_weight

    def trainable_networks(self) -> dict[str, nn.Module]:
        return {**self.regularizer.trainable_networks(), "student": self.student}

    def phases(self) -> list[Phase]:
        return [p for p in self.regularizer.phases() if p.network != "student"] + [Phase("student", "student")]

    def loss(self, phase: str, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        if phase != "student":
            return self.regularizer.loss(phase, batch, generator)
        loss, logs = self.scm_loss(batch, generator)
        term, term_logs = self.regularizer.loss("generator", batch, generator)
        logs.update(term_logs)
        logs["regularizer_loss"] = term.detach()
        return loss + self.regularizer_weight * term, logs

    def after_update(self, phase: str) -> None:
        if phase == "student":
            super().after_update(phase)
        else:
            self.regularizer.after_update(phase)

    def extra_state(self) -> dict[str, Tensor]:
        return {**super().extra_state(), **{f"regularizer.{k}": v for k, v in self.regularizer.extra_state().items()}}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        super().load_extra_state({k: v for k, v in state.items() if not k.startswith("regularizer.")})
        self.regularizer.load_extra_state({k.removeprefix("regularizer."): v for k, v in state.items()
                                           if k.startswith("regularizer.")})


class DMDRegularizerConfig(StrictModel):
    """rCM's score-distillation term: DMD on the student's samples (1 step from t_max unless student_times)."""

    student_times: list[float] | None = None  # native path times of the regulariser's generator; None: [t_max]
    backward_simulation: bool = True
    guidance_scale: float = 1.0
    time_range: tuple[float, float] = (0.02, 0.98)
    time_shift: float = 1.0
    fake_score_updates: int = 1
    fake_score: FakeScoreConfig = FakeScoreConfig()
    gan: GANConfig = GANConfig()  # DMD2's head on the fake score; off by default


class RCMConfig(SCMConfig):
    """rCM: sCM + DMD regulariser. The weight that lets DMD matter grows with D (elements per sample) and with
    training: sCM's adaptive weighting divides its per-element mean by the learned variance of a residual normalised
    to unit norm (mse ~ 1/D, exp(-u) -> D); benchmarks/regularizer_balance.py measures the weight of equal pull
    (10-26 on the bundled 28x28 task, whose recipe uses 50; the 2-D toy's uses 0.1)."""

    name: Literal["rcm"] = "rcm"  # type: ignore[assignment]
    regularizer_weight: float = 0.1
    dmd: DMDRegularizerConfig = DMDRegularizerConfig()


class LADDRegularizerConfig(StrictModel):
    """SANA-Sprint's adversarial term: LADD heads on the teacher's features of re-noised student samples."""

    student_times: list[float] | None = None
    backward_simulation: bool = True
    discriminator: DiscriminatorConfig = DiscriminatorConfig(noise_range=(0.0, 1.0))


class SCMLADDConfig(SCMConfig):
    """SANA-Sprint: sCM + LADD. benchmarks/regularizer_balance.py measures the weight of equal pull on the student
    (about 1 after 300 steps of the bundled 28x28 task); there the recipe's 0.005 leaves LADD ~0.5% of the update,
    while trial runs at 0.2 and 0.5 were far worse (the term drowns sCM). The 2-D toy's recipe uses 0.5."""

    name: Literal["scm_ladd"] = "scm_ladd"  # type: ignore[assignment]
    regularizer_weight: float = 0.5
    ladd: LADDRegularizerConfig = LADDRegularizerConfig()


def _regularized(cfg: SCMConfig, student: Denoiser, teacher: Denoiser, regularizer: FewStepGenerator) -> Objective:
    settings = cfg.model_dump(exclude={"name", "regularizer_weight", "dmd", "ladd"})
    loss = SCMLoss(**{k: settings.pop(k) for k in LOSS_KEYS})
    return RegularizedConsistency(student, teacher, loss, regularizer,
                                  regularizer_weight=cfg.regularizer_weight, **settings)  # type: ignore[attr-defined]


def _build_rcm(cfg: RCMConfig, student: Denoiser, teacher: Denoiser) -> Objective:
    d = cfg.dmd
    dmd = DistributionMatching(student, teacher, make_fake_score(d, student, teacher),  # type: ignore[arg-type]
                               student_times=d.student_times, guidance_scale=d.guidance_scale, time_range=d.time_range,
                               time_shift=d.time_shift, fake_score_updates=d.fake_score_updates,
                               backward_simulation=d.backward_simulation, **gan_settings(d.gan))
    return _regularized(cfg, student, teacher, dmd)


def _build_scm_ladd(cfg: SCMLADDConfig, student: Denoiser, teacher: Denoiser) -> Objective:
    a = cfg.ladd
    ladd = AdversarialDistillation(student, teacher, make_adversarial(a.discriminator, student, teacher),
                                   student_times=a.student_times, data_inputs=False,
                                   backward_simulation=a.backward_simulation)
    return _regularized(cfg, student, teacher, ladd)


register("rcm", RCMConfig, _build_rcm)
register("scm_ladd", SCMLADDConfig, _build_scm_ladd)
