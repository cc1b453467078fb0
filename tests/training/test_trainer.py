"""Trainer semantics: accumulation, two-time-scale phases, NaN guard, atomic checkpoints."""

from pathlib import Path

import pytest
import torch
from torch import nn

from fewstep.config import OptimizerConfig, RunConfig
from fewstep.objectives.base import Batch, Objective, Phase
from fewstep.training import checkpoint as ckpt
from fewstep.training.trainer import NonFiniteError, RunawayError, Trainer

from ._common import cosine_with_warmup


class FixedBatches:
    """Hands out consecutive slices of one fixed dataset (so accumulation can be compared exactly)."""

    def __init__(self, data: torch.Tensor, batch_size: int):
        self.data, self.batch_size, self.position = data, batch_size, 0

    def next_batch(self, generator):
        idx = torch.arange(self.position, self.position + self.batch_size) % len(self.data)
        self.position += self.batch_size
        return Batch(self.data[idx])

    def sample_shape(self):
        return tuple(self.data.shape[1:])

    def sample_conditions(self, n):
        return None

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


class Regression(Objective):
    """Least squares of a linear map onto a fixed target: a loss whose gradient we know exactly."""

    def __init__(self, nan_at_call: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, 1)
        self.calls, self.nan_at_call = 0, nan_at_call

    def trainable_networks(self):
        return {"net": self.net}

    def loss(self, phase, batch, generator):
        self.calls += 1
        pred = self.net(batch.x0)
        loss = (pred - batch.x0.sum(1, keepdim=True)).pow(2).mean()
        if self.calls == self.nan_at_call:
            loss = loss * float("nan")
        return loss, {"reg_loss": loss.detach()}

    def sample(self, noise, num_steps, cond, generator):
        return noise


def make_run(tmp_path: Path, **kw) -> RunConfig:
    base = dict(output_dir=str(tmp_path), max_steps=4, trackers=[], progress_bar=False, num_samples=0,
                max_grad_norm=None)
    return RunConfig(**{**base, **kw})


def sgd_like() -> dict[str, OptimizerConfig]:
    return {"net": OptimizerConfig(lr=0.05)}


def test_gradient_accumulation_equals_the_big_batch(tmp_path):
    data = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    big = Regression()
    Trainer(big, FixedBatches(data, 16), make_run(tmp_path / "a"), sgd_like()).fit()
    accumulated = Regression()
    Trainer(accumulated, FixedBatches(data, 8), make_run(tmp_path / "b", gradient_accumulation_steps=2),
            sgd_like()).fit()
    for p, q in zip(big.parameters(), accumulated.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(big.net.weight, Regression().net.weight)  # it did train


class TwoNetworks(Objective):
    def __init__(self):
        super().__init__()
        self.generator_net, self.critic = nn.Linear(2, 2), nn.Linear(2, 2)
        self.updates: list[str] = []

    def trainable_networks(self):
        return {"generator": self.generator_net, "critic": self.critic}

    def phases(self):
        return [Phase("critic", "critic", repeats=3), Phase("generator", "generator", repeats=1)]

    def loss(self, phase, batch, generator):
        net = self.critic if phase == "critic" else self.generator_net
        return net(batch.x0).pow(2).mean(), {}

    def after_update(self, phase):
        self.updates.append(phase)

    def sample(self, noise, num_steps, cond, generator):
        return noise


def test_two_time_scale_ratio_and_separate_learning_rates(tmp_path):
    objective = TwoNetworks()
    trainer = Trainer(objective, FixedBatches(torch.randn(32, 2), 4), make_run(tmp_path, max_steps=5),
                      {"generator": OptimizerConfig(lr=1e-3), "critic": OptimizerConfig(lr=4e-3)})
    trainer.fit()
    assert objective.updates == (["critic"] * 3 + ["generator"]) * 5
    assert trainer.optimizers["critic"].param_groups[0]["lr"] == 4e-3
    assert trainer.optimizers["generator"].param_groups[0]["lr"] == 1e-3
    assert trainer.optimizers["critic"].state_dict()["state"][0]["step"] == 15
    assert trainer.optimizers["generator"].state_dict()["state"][0]["step"] == 5


def test_learning_rate_follows_the_training_step_for_every_network(tmp_path):
    """A critic updated 3x per step runs the same cosine over max_steps as the generator, not 3x as fast."""
    steps, warmup = 8, 2
    schedule = dict(lr_scheduler="cosine", warmup_steps=warmup)
    trainer = Trainer(TwoNetworks(), FixedBatches(torch.randn(32, 2), 4), make_run(tmp_path, max_steps=steps),
                      {"generator": OptimizerConfig(lr=1e-3, **schedule),
                       "critic": OptimizerConfig(lr=4e-3, **schedule)})
    trainer.fit()
    for row in trainer.history:
        factor = cosine_with_warmup(row["step"], warmup, steps)
        assert row["lr/generator"] == pytest.approx(1e-3 * factor, abs=1e-12), row
        assert row["lr/critic"] == pytest.approx(4e-3 * factor, abs=1e-12), row
    assert trainer.history[-1]["lr/critic"] == pytest.approx(0.0, abs=1e-12)


def test_missing_optimizer_settings_name_the_network(tmp_path):
    with pytest.raises(ValueError, match=r"optimizers: no settings for network\(s\) \['critic'\]"):
        Trainer(TwoNetworks(), FixedBatches(torch.randn(8, 2), 4), make_run(tmp_path), {"generator": OptimizerConfig()})


def test_nan_stops_with_context_and_keeps_last_good_checkpoint(tmp_path):
    data = torch.randn(64, 4)
    objective = Regression(nan_at_call=3)
    trainer = Trainer(objective, FixedBatches(data, 8), make_run(tmp_path, max_steps=10, checkpoint_every=2),
                      sgd_like())
    with pytest.raises(NonFiniteError) as err:
        trainer.fit()
    message = str(err.value)
    assert "step 3" in message and "net/loss" in message and "reg_loss" in message
    assert "step-00000002" in message and "--resume latest" in message
    good = tmp_path / "checkpoints" / "step-00000002"
    assert (tmp_path / "checkpoints" / "latest").read_text() == good.name
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-00000002"]


class Spreading(Regression):
    """Logs a sample diversity that doubles every call: samples spreading without bound, every value finite."""

    def loss(self, phase, batch, generator):
        loss, logs = super().loss(phase, batch, generator)
        return loss, {**logs, "diversity": torch.tensor(0.5 * 2.0 ** self.calls)}


def test_runaway_samples_stop_the_run_before_the_bad_step_is_saved(tmp_path):
    """diversity 1, 2, 4, 8, 16: the limit 10 is passed at step 5, after the checkpoint of step 4."""
    run = make_run(tmp_path, max_steps=10, checkpoint_every=2, keep_checkpoints=5)
    with pytest.raises(RunawayError) as err:
        Trainer(Spreading(), FixedBatches(torch.randn(64, 4), 8), run, sgd_like()).fit()
    message = str(err.value)
    assert "diversity 16 at step 5" in message and "max_diversity_growth=10" in message
    assert "step-00000004" in message and "--resume latest" in message
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-00000002", "step-00000004"]
    resumed = Spreading()
    resumed.calls = 4  # continues at diversity 16: judged against the checkpoint's first value 1, not its own
    with pytest.raises(RunawayError, match="diversity 16 at step 5"):
        Trainer(resumed, FixedBatches(torch.randn(64, 4), 8), run, sgd_like()).fit(resume="latest")
    Trainer(Spreading(), FixedBatches(torch.randn(64, 4), 8),  # off: the same run trains to the end
            make_run(tmp_path / "off", max_steps=10, max_diversity_growth=None), sgd_like()).fit()
    started_collapsed = Spreading()
    started_collapsed.calls = -8  # diversity 1/512 growing to 8: a generator leaving the data mean, not a runaway
    Trainer(started_collapsed, FixedBatches(torch.randn(64, 4), 8), make_run(tmp_path / "collapsed", max_steps=12),
            sgd_like()).fit()


def test_crash_during_save_leaves_last_good_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(Regression(), FixedBatches(torch.randn(64, 4), 8), make_run(tmp_path, max_steps=2), sgd_like())
    trainer.fit()
    good = (tmp_path / "checkpoints" / "latest").read_text()
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints" / good).iterdir()}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(trainer.accelerator, "save_state", crash)
    trainer.step = 3
    with pytest.raises(KeyboardInterrupt):
        trainer.save()
    assert (tmp_path / "checkpoints" / "latest").read_text() == good
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoints" / good).iterdir()} == before
    assert ckpt.resolve_checkpoint(tmp_path, "latest").name == good
    # a later successful save cleans the half-written folder up and becomes latest
    monkeypatch.undo()
    trainer.save()
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step-00000003"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_checkpoint_by_latest_name_or_path_and_a_clear_error(tmp_path):
    Trainer(Regression(), FixedBatches(torch.randn(64, 4), 8), make_run(tmp_path, max_steps=4, checkpoint_every=2),
            sgd_like()).fit()
    root = tmp_path / "checkpoints"
    assert ckpt.resolve_checkpoint(tmp_path, "latest") == root / "step-00000004"
    assert ckpt.resolve_checkpoint(tmp_path, "step-00000002") == root / "step-00000002"
    assert ckpt.resolve_checkpoint(tmp_path, str(root / "step-00000002")) == root / "step-00000002"
    with pytest.raises(FileNotFoundError) as err:
        ckpt.resolve_checkpoint(tmp_path, "step-00000003")
    assert "step-00000003" in str(err.value) and "['step-00000002', 'step-00000004']" in str(err.value)


def test_data_position_is_restored(tmp_path):
    source = FixedBatches(torch.randn(64, 4), 8)
    trainer = Trainer(Regression(), source, make_run(tmp_path, max_steps=3), sgd_like())
    trainer.fit()
    resumed_source = FixedBatches(torch.randn(64, 4), 8)
    resumed = Trainer(Regression(), resumed_source, make_run(tmp_path, max_steps=3), sgd_like())
    resumed.load("latest")
    assert resumed_source.position == source.position == 24
    assert resumed.step == 3
