"""On the exact Gaussian-mixture toy (the shipped recipes, seeded): every adversarial / score-identity student
at 1 step, and the regularised consistency students at 1 and 2 steps, beat the teacher's Euler sampler at the
same step count; rCM's 1-step sample is at least as good as sCM's (within 5%)."""

from pathlib import Path

import pytest
import torch

from fewstep.build import build_setup
from fewstep.config import load_config
from fewstep.sampling import sample_ode
from fewstep.toy import sliced_wasserstein
from fewstep.training.trainer import Trainer

from .helpers import QUIET, ROOT


def train_and_score(recipe: str, tmp_path: Path, steps: tuple[int, ...], seed: int = 0
                    ) -> tuple[dict[int, float], dict[int, float]]:
    config = load_config(ROOT / "configs" / recipe, [f"run.output_dir={tmp_path}", f"run.seed={seed}", *QUIET])
    setup = build_setup(config)
    Trainer(setup.objective, setup.data, config.run, config.optimizers).fit()
    noise = torch.randn(1500, 2, generator=torch.Generator().manual_seed(0))
    data = setup.teacher.mixture.sample(1500, torch.Generator().manual_seed(1))
    student = {n: float(sliced_wasserstein(setup.objective.sample(noise, n, None, torch.Generator().manual_seed(2)),
                                           data)) for n in steps}
    teacher = {n: float(sliced_wasserstein(sample_ode(setup.teacher, noise, n), data)) for n in steps}
    return student, teacher


@pytest.mark.parametrize("recipe", ["add_toy.yaml", "ladd_toy.yaml", "sid_toy.yaml", "sida_toy.yaml", "vsd_toy.yaml"])
def test_one_step_student_beats_the_teacher_across_seeds(recipe, tmp_path):
    """Three run seeds: the median student / teacher SW is below 0.6 (measured 0.2-0.45) and no seed is worse than
    the teacher (a recipe that diverges at some seeds, as SiD at student lr 3e-4 did, fails here)."""
    ratios = []
    for seed in (0, 1, 2):
        student, teacher = train_and_score(recipe, tmp_path / str(seed), (1,), seed)
        ratios.append(student[1] / teacher[1])
    assert sorted(ratios)[1] < 0.6 and max(ratios) < 1.0, ratios


def test_regularised_consistency_beats_the_teacher_and_rcm_is_no_worse_than_scm(tmp_path):
    scores = {r: train_and_score(f"{r}_toy.yaml", tmp_path / r, (1, 2)) for r in ("scm", "rcm", "scm_ladd")}
    for recipe in ("rcm", "scm_ladd"):
        student, teacher = scores[recipe]
        assert student[1] < 0.5 * teacher[1] and student[2] < 0.5 * teacher[2], (recipe, student, teacher)
    assert scores["rcm"][0][1] <= 1.05 * scores["scm"][0][1], scores
