"""Consistency distillation: boundary condition against diffusers' LCMScheduler, and the
student beating its teacher at equal steps on the exact Gaussian-mixture task."""

import pytest
import torch
from diffusers import LCMScheduler

from fewstep.build import build_setup
from fewstep.config import load_config
from fewstep.diffusion import VPPath
from fewstep.objectives.consistency import BoundaryCondition, consistency_distance
from fewstep.sampling import sample_ode
from fewstep.toy import GaussianMixtureDenoiser, ToyStudent, ring_mixture, sliced_wasserstein
from fewstep.training.trainer import Trainer


def vp_student():
    teacher = GaussianMixtureDenoiser(ring_mixture(), VPPath.from_scheduler_config())
    return ToyStudent(teacher)


def test_boundary_scalings_match_diffusers_lcm_scheduler():
    boundary = BoundaryCondition(vp_student(), boundary_time=0.0, sigma_data=0.5, timestep_scaling=10.0)
    lcm = LCMScheduler(timestep_scaling=10.0)
    for step in [0, 1, 19, 259, 999]:
        c_skip, c_out = boundary.scalings(torch.tensor([float(step)], dtype=torch.float64))
        ref_skip, ref_out = lcm.get_scalings_for_boundary_condition_discrete(step)
        assert abs(float(c_skip) - ref_skip) < 1e-12 and abs(float(c_out) - ref_out) < 1e-12


def test_boundary_condition_is_exact_at_the_boundary_time():
    student = vp_student()
    with torch.no_grad():
        student.head.weight.normal_()  # a non-trivial network output
    boundary = BoundaryCondition(student, boundary_time=0.0)
    x = torch.randn(16, 2, dtype=torch.float64)
    t = torch.zeros(16, dtype=torch.float64)
    assert torch.equal(boundary(student, x.float(), t, None), x.float())
    away = boundary(student, x.float(), t + 500, None)
    assert (away - x.float()).abs().max() > 0.1


def test_pseudo_huber_matches_its_formula():
    pred, target = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    c = 0.00054 * (32 ** 0.5)
    expected = torch.sqrt(((pred - target) ** 2).flatten(1).sum(1) + c * c) - c
    torch.testing.assert_close(consistency_distance(pred, target, "pseudo_huber", 0.00054), expected)
    torch.testing.assert_close(consistency_distance(pred, target, "l2", 0.0), ((pred - target) ** 2).flatten(1).mean(1))


@pytest.mark.parametrize("recipe", ["mcm_toy", "cd_toy"])
def test_uniform_grid_reaches_the_objective(recipe, tmp_path):
    config = load_config(f"configs/{recipe}.yaml", [f"run.output_dir={tmp_path}", "objective.grid=uniform",
                                                    "objective.num_timesteps=8"])
    grid = build_setup(config).objective.grid
    torch.testing.assert_close(grid, torch.linspace(1, 0, 9, dtype=torch.float64).to(grid.dtype))
    with pytest.raises(ValueError, match="grid"):
        load_config(f"configs/{recipe}.yaml", ["objective.grid=even"])


# the diffusers Euler grid, and a short Heun grid even in time (configs/cd_heun_long_animal_mnist.yaml's choice)
@pytest.mark.parametrize("teacher_grid", [[], ["objective.grid=uniform", "objective.solver=heun",
                                               "objective.num_timesteps=8"]])
def test_cd_student_beats_teacher_at_equal_steps_on_the_exact_toy(teacher_grid, tmp_path):
    config = load_config("configs/cd_toy.yaml", [f"run.output_dir={tmp_path}", "run.trackers=[]",
                                                 "run.progress_bar=false", "run.num_samples=0", *teacher_grid])
    setup = build_setup(config)
    mixture = setup.teacher.mixture
    noise = torch.randn(1500, 2, generator=torch.Generator().manual_seed(0))
    data = mixture.sample(1500, torch.Generator().manual_seed(1))
    before = sliced_wasserstein(setup.objective.sample(noise, 1, None, torch.Generator().manual_seed(2)), data)
    Trainer(setup.objective, setup.data, config.run, config.optimizers).fit()
    student = {n: sliced_wasserstein(setup.objective.sample(noise, n, None, torch.Generator().manual_seed(2)), data)
               for n in (1, 2)}
    teacher = {n: sliced_wasserstein(sample_ode(setup.teacher, noise, n), data) for n in (1, 2)}
    # the teacher's 1-2 step Euler samples collapse to the data mean; the student lands near the modes
    assert student[1] < 0.3 * teacher[1], (student, teacher)
    assert student[2] < 0.3 * teacher[2], (student, teacher)
    assert student[1] < 0.3 * before, (student[1], before)


@pytest.mark.parametrize("num_timesteps", [8, 16, 50])
def test_sampler_picks_the_grid_times_lcm_scheduler_picks(num_timesteps, tmp_path):
    """Multistep sampling visits the training-grid positions that diffusers' LCMScheduler.set_timesteps visits on an
    LCM trained with as many grid steps; the last time stays clear of the boundary (diffusers' flow grid ends in a
    step from sigma 0.001 to 0, which the old round(linspace(0, N - 1, n)) spent its last sampling step on)."""
    config = load_config("configs/cd_toy.yaml", [f"run.output_dir={tmp_path}",
                                                 f"objective.num_timesteps={num_timesteps}"])
    objective = build_setup(config).objective
    lcm = LCMScheduler(original_inference_steps=num_timesteps)
    skip = lcm.config.num_train_timesteps // num_timesteps
    for num_steps in range(1, 9):
        lcm.set_timesteps(num_steps)
        lcm_positions = [num_timesteps - (int(t) + 1) // skip for t in lcm.timesteps]  # in its decreasing schedule
        times = objective.sampling_grid(num_steps)
        positions = [int((objective.grid == t).nonzero()) for t in times]
        assert positions == lcm_positions
    assert objective.sampling_grid(2)[-1] >= 0.4 * objective.grid[0]
    with pytest.raises(ValueError, match="num_steps"):
        objective.sampling_grid(num_timesteps + 1)
