"""fewstep.build: student.init starts a run from another run's networks (SiD²A: SiDA from a SiD run)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fewstep.build import build_setup
from fewstep.config import ConfigError, load_config
from fewstep.runs import load_run
from fewstep.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["run.trackers=[]", "run.progress_bar=false", "run.num_samples=0", "run.checkpoint_every=0"]


def train(recipe: str, run_dir: Path, *overrides: str):
    config = load_config(ROOT / "configs" / recipe,
                         [f"run.output_dir={run_dir}", "run.max_steps=2", *QUIET, *overrides])
    setup = build_setup(config)
    Trainer(setup.objective, setup.data, config.run, config.optimizers, config.to_dict()).fit()
    return setup


def assert_equal_weights(module: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    state = module.state_dict()
    assert saved and all(torch.equal(state[k], v) for k, v in saved.items())


def test_a_sida_run_starts_from_a_sid_runs_student_and_fake_score(tmp_path):
    sid = tmp_path / "sid"
    train("sid_toy.yaml", sid)
    checkpoint = sid / "checkpoints" / "step-00000002"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["networks"] == ["student", "fake_score"]
    student, fake = load_file(checkpoint / "model.safetensors"), load_file(checkpoint / "model_1.safetensors")
    fresh = build_setup(load_config(ROOT / "configs" / "sida_toy.yaml", [f"run.output_dir={tmp_path / 'x'}", *QUIET]))
    assert not torch.equal(fresh.student.state_dict()[next(iter(student))], next(iter(student.values())))

    for source in (sid, checkpoint):  # a run directory (its latest checkpoint) or a checkpoint folder
        config = load_config(ROOT / "configs" / "sida_toy.yaml",
                             [f"run.output_dir={tmp_path / 'sida'}", f"student.init={source}", *QUIET])
        setup = build_setup(config)
        assert_equal_weights(setup.objective.student, student)
        assert_equal_weights(setup.objective.fake_score, fake)  # all but the fresh discriminator head
        assert setup.objective.fake_score.head is not None

    # checkpoints from before trainer_state named the networks: read in the loading objective's order
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    del state["networks"]
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    setup = train("sida_toy.yaml", tmp_path / "sida", f"student.init={checkpoint}", "run.max_steps=1")
    assert_equal_weights(build_setup(load_config(ROOT / "configs" / "sida_toy.yaml", [
        f"run.output_dir={tmp_path / 'y'}", f"student.init={checkpoint}", *QUIET])).objective.fake_score, fake)

    # the started run no longer needs its source: load_run and resume read only its own checkpoints
    shutil.rmtree(sid)
    reloaded = load_run(tmp_path / "sida")
    assert_equal_weights(reloaded.student,
                         load_file(tmp_path / "sida" / "checkpoints" / "step-00000001" / "model.safetensors"))


def test_student_init_errors_name_the_fix(tmp_path):
    def build(source):
        return build_setup(load_config(ROOT / "configs" / "sida_toy.yaml",
                                       [f"run.output_dir={tmp_path / 'run'}", f"student.init={source}", *QUIET]))

    with pytest.raises(ConfigError, match="student.init: .* does not exist; give 'teacher'"):
        build(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        (tmp_path / "empty").mkdir()
        build(tmp_path / "empty")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "trainer_state.json").write_text(json.dumps({"step": 1, "networks": ["student"]}))
    save_file({"not_a_layer.weight": torch.zeros(2)}, str(foreign / "model.safetensors"))
    with pytest.raises(ConfigError, match="does not fit this recipe's student"):
        build(foreign)


@pytest.mark.parametrize("recipe", ["cd_toy.yaml", "mcm_toy.yaml"])
def test_a_warm_restart_starts_the_ema_target_at_the_loaded_student(tmp_path, recipe):
    """Built from the teacher, CD's target is a copy of the student; after student.init it must be a copy of the
    loaded student, not of the teacher the student was built from."""
    source = tmp_path / "source"
    train(recipe, source)
    student = load_file(source / "checkpoints" / "step-00000002" / "model.safetensors")
    setup = build_setup(load_config(ROOT / "configs" / recipe,
                                    [f"run.output_dir={tmp_path / 'next'}", f"student.init={source}", *QUIET]))
    assert_equal_weights(setup.objective.student, student)
    assert_equal_weights(setup.objective.target, student)
    fresh = build_setup(load_config(ROOT / "configs" / recipe, [f"run.output_dir={tmp_path / 'x'}", *QUIET]))
    assert not all(torch.equal(fresh.objective.target.state_dict()[k], v) for k, v in student.items())


@pytest.mark.parametrize("recipe", ["scm_toy.yaml", "rcm_toy.yaml"])
def test_a_warm_restart_from_an_scm_run_carries_on_its_tangent_warm_up(tmp_path, recipe):
    """sCM's tangent warm-up r = updates / tangent_warmup_steps: a student already trained by sCM must not be
    restarted at r = 0 (its tangent without dF/dt); a run whose state is not sCM's starts it at 0."""
    source = tmp_path / "source"
    train("scm_toy.yaml", source, "objective.tangent_warmup_steps=4")
    checkpoint = source / "checkpoints" / "step-00000002"

    def warm_start(init: Path):
        return build_setup(load_config(ROOT / "configs" / recipe, [
            f"run.output_dir={tmp_path / 'next'}", f"student.init={init}", "objective.tangent_warmup_steps=4",
            *QUIET])).objective

    objective = warm_start(source)
    assert int(objective.updates) == 2 and objective.warmup == 0.5
    assert float(objective.tangent_norm_mean) == 0  # the guards' running means start afresh
    fresh = build_setup(load_config(ROOT / "configs" / recipe, [f"run.output_dir={tmp_path / 'x'}", *QUIET]))
    assert int(fresh.objective.updates) == 0 and fresh.objective.warmup == 0

    state = load_file(checkpoint / "objective_state.safetensors")
    save_file({"target.weight": torch.zeros(1)}, str(checkpoint / "objective_state.safetensors"))  # not sCM's state
    assert int(warm_start(source).updates) == 0
    (checkpoint / "objective_state.safetensors").unlink()  # a checkpoint without objective state
    assert int(warm_start(source).updates) == 0
    save_file(state, str(checkpoint / "objective_state.safetensors"))
    assert warm_start(checkpoint).warmup == 0.5
