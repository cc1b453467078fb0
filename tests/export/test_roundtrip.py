"""Round trip: train 2 CD steps (LoRA rank 4) -> fewstep export -> load into a FRESH diffusers pipeline
(load_lora_weights / from_pretrained) -> sample with the shipped scheduler at the trained step counts ->
equals the trainer's own sampler (objective.sample) on the same noise.

Noise: the pipeline gets latents = initial_state(noise) (what the student sampler starts from). Multistep
samplers re-noise between steps; the scheduler draws that noise through diffusers' randn_tensor, which we
point at a generator with the student's seed and layout (FLUX's pipeline works on packed tokens, so the
draw is packed the same way), so both sides add identical noise.

Tolerance: |pipeline - student| <= 1e-5 * max|student|. Both run the same fp32 network on the same inputs;
what differs is float32 (LCMScheduler's alphas_cumprod, flow sigmas) vs the student's float64 schedule
coefficients, amplified at most ~10x by 1/sqrt(alpha) at the first VP timestep: measured <= 2e-7 relative,
so 1e-5 leaves a 50x margin while a wrong timestep, scale or missing LoRA key moves outputs by > 1e-3.
Flow students at 2+ steps: diffusers' FlowMatchEulerDiscreteScheduler has no boundary condition (c_skip=0,
c_out=1); the export records the largest c_skip / 1-c_out on its grid (max_boundary_error, 2.5e-3 at
sigma=0.001). There we check (a) exact agreement with the student's sampler with its boundary term switched
off, and (b) agreement with the real student within 3 * max_boundary_error * max|x| (the term's size).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from fewstep.build import build_text_encoder
from fewstep.export import load_export, open_run, read_info
from fewstep.export.families import latent_size_multiple
from fewstep.models.flux import pack_latents
from fewstep.objectives.base import initial_state

PROMPTS = ["a photo of a cat", "a red car"]
RTOL = 1e-5


@contextlib.contextmanager
def matched_noise(monkeypatch, seed: int, shape: tuple[int, ...]):
    """Make the schedulers' re-noising draw what objective.sample draws with Generator(seed)."""
    from diffusers.schedulers import scheduling_flow_match_euler_discrete as flow_mod
    from diffusers.schedulers import scheduling_lcm as lcm_mod

    import fewstep.schedulers as fewstep_mod

    source = torch.Generator().manual_seed(seed)

    def draw(requested, generator=None, device=None, dtype=None, layout=None):  # noqa: ARG001
        x = torch.randn(shape, generator=source, dtype=dtype or torch.float32)
        return x if tuple(requested) == tuple(shape) else pack_latents(x)

    with monkeypatch.context() as m:
        m.setattr(lcm_mod, "randn_tensor", draw)
        m.setattr(flow_mod, "randn_tensor", draw)
        m.setattr(fewstep_mod, "randn_tensor", draw)
        yield


def student_and_inputs(run, multiple: int):
    setup = run.setup
    c, h, w = setup.data.sample_shape()
    shape = (2, c, -(-h // multiple) * multiple, -(-w // multiple) * multiple)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    if run.family.text:
        encoder = build_text_encoder(run.config.model, setup.teacher)
        return noise, encoder(PROMPTS), {"prompts": PROMPTS}
    labels = torch.tensor([0, 1])
    return noise, {"class_labels": labels}, {"class_labels": labels}


@contextlib.contextmanager
def without_boundary(objective):
    """The student's sampler with c_skip = 0, c_out = 1 (what FlowMatchEulerDiscreteScheduler computes)."""
    boundary = objective.boundary
    old = boundary.timestep_scaling
    boundary.timestep_scaling = 1e12
    try:
        yield
    finally:
        boundary.timestep_scaling = old


def check_round_trip(run, loaded, monkeypatch, call_kwargs=None):
    """Pipeline output vs objective.sample at every exported step count; returns the 1-step pipeline output."""
    objective, spec = run.setup.objective, loaded.spec
    noise, cond, pipe_inputs = student_and_inputs(run, latent_size_multiple(loaded.pipe, loaded.family))
    first = None
    for n in spec.recommended_steps:
        grid = getattr(objective, "sampling_grid", None) or objective.sampling_times
        latents = initial_state(noise, run.setup.student.path, grid(n)[0])
        with matched_noise(monkeypatch, 7, tuple(noise.shape)):
            out = loaded.generate(n, latents, generator=torch.Generator().manual_seed(123), **pipe_inputs,
                                  **(call_kwargs or {}))
        student = objective.sample(noise, n, cond, torch.Generator().manual_seed(7))
        scale = float(student.abs().max())
        err = float((out.float() - student).abs().max())
        if spec.max_boundary_error and n > 1:
            with without_boundary(objective):
                exact = objective.sample(noise, n, cond, torch.Generator().manual_seed(7))
            err_exact = float((out.float() - exact).abs().max())
            assert err_exact <= RTOL * scale, (n, err_exact, scale)
            # the left-out boundary term, or float32 round-off where that term is smaller still
            assert err <= max(3 * spec.max_boundary_error, RTOL) * scale, (n, err, spec.max_boundary_error, scale)
        else:
            assert err <= RTOL * scale, (n, err, scale)
        first = out if first is None else first
    return first, pipe_inputs, noise


@pytest.mark.parametrize("family", ["sd15", "sdxl", "sd3", "flux", "sana"])
def test_lora_round_trip(family, trained, exported, monkeypatch):
    from fewstep.models.tiny import tiny_pipeline

    folder = exported(family, "lora")
    run = open_run(trained(family))
    info = read_info(folder)
    assert info["scheduler"]["class_name"] == ("LCMScheduler" if family in ("sd15", "sdxl") else
                                               "FlowMatchEulerDiscreteScheduler")
    # the shipped schedules are exactly the student's sampling grids
    for n in (1, 2):
        key = "timesteps" if family in ("sd15", "sdxl") else "sigmas"
        assert info["scheduler"]["steps"][str(n)][key] == run.setup.objective.sampling_grid(n).tolist()
    with safe_open(str(folder / "pytorch_lora_weights.safetensors"), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["fewstep.method"] == "cd" and meta["fewstep.steps"] == "1,2"
    assert meta["fewstep.base_model_sha256"] == info["base_model_sha256"] and meta["fewstep.version"]
    assert all(k.startswith(("unet." if family in ("sd15", "sdxl") else "transformer.")) for k in keys)

    # a fresh base pipeline, loaded the way the model card says (strict: every key must arrive)
    loaded = load_export(folder, base=tiny_pipeline(family), check_base=True)
    loaded.pipe.set_progress_bar_config(disable=True)
    assert loaded.lora_report["tensors"] == len(keys) and loaded.lora_report["converted_by"] == "diffusers"
    assert info["verification"]["lora_load"]["tensors"] == len(keys)
    extra = {"original_size": (1024, 1024), "target_size": (1024, 1024)} if family == "sdxl" else {}  # trained ids
    out, inputs, noise = check_round_trip(run, loaded, monkeypatch, extra)
    # ... and differs from the base model
    loaded.pipe.disable_lora()
    base = loaded.generate(1, initial_state(noise, run.setup.student.path, run.setup.objective.sampling_grid(1)[0]),
                           **inputs, **extra)
    assert float((out - base).abs().max()) > 1e-4 * float(base.abs().max())  # 1000x the numerical noise


@pytest.mark.parametrize("family,lora", [("dit", True), ("unet2d", False)], ids=["dit-lora-fused", "unet2d-full"])
def test_full_class_conditional_round_trip(family, lora, trained, exported, monkeypatch):
    import diffusers

    folder = exported(family, "full", lora=lora, fuse=True)
    info = read_info(folder)
    assert info["fused"] == lora and (folder / "model_index.json").is_file()
    # a plain diffusers pipeline folder: no LoRA keys, the few-step scheduler is a diffusers class
    cls = getattr(diffusers, info["pipeline_class"])
    pipe = cls.from_pretrained(str(folder))
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    network = getattr(pipe, info["network"])
    assert not any("lora" in k for k in network.state_dict())
    with safe_open(str(next((folder / info["network"]).glob("*.safetensors"))), "pt") as f:
        assert f.metadata()["fewstep.format"] == "full"
    run = open_run(trained(family, lora))
    loaded = load_export(folder)
    check_round_trip(run, loaded, monkeypatch)


def test_full_text_pipeline_fused_round_trip(trained, exported, monkeypatch):
    """SD 1.5 full export, LoRA fused + unloaded: StableDiffusionPipeline.from_pretrained is the student."""
    import diffusers

    folder = exported("sd15", "full", fuse=True)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(folder))
    assert not any("lora" in k for k in pipe.unet.state_dict())
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    assert not list(folder.rglob("*.bin"))
    check_round_trip(open_run(trained("sd15")), load_export(folder), monkeypatch)


@pytest.mark.parametrize("recipe,family,extra,scheduler", [
    ("sid_sd15_tiny", "sd15", [], "LCMScheduler"), ("rcm_sd3_tiny", "sd3", [], "FlowMatchEulerDiscreteScheduler"),
    ("scm_ladd_flux_tiny", "flux", [], "FlowMatchEulerDiscreteScheduler"),
    ("mcm_sd3_tiny", "sd3", [], "FlowMatchEulerDiscreteScheduler"),
    ("mcm_sana_tiny", "sana", ["objective.gamma=1"], "FlowMatchEulerDiscreteScheduler"),
    # no stock diffusers scheduler reproduces these: fewstep's own (fewstep.schedulers)
    ("mcm_sd15_tiny", "sd15", ["objective.gamma=0"], "FewStepConsistencyScheduler"),
    ("mcm_flux_tiny", "flux", ["objective.gamma=0.3"], "FewStepConsistencyScheduler"),
    ("rcm_sd15_tiny", "sd15", ["objective.gamma=0.5"], "FewStepConsistencyScheduler")])
def test_generator_and_consistency_students_round_trip(recipe, family, extra, scheduler, tmp_path, monkeypatch):
    """Few-step generators (SiD here: jump to x0, re-noise) export with the default scheduler; sCM-family students
    (rCM, sCM + LADD) export their TrigFlow sampler as the native re-noising sampler at equal-SNR times; multistep
    CM students at gamma = 0 (edge-to-edge jumps: plain flow Euler) and gamma = 1 (re-noise). VP jumps at gamma = 0,
    TCD's 0 < gamma < 1 and VP sCM's non-integer timesteps (gamma on TrigFlow's angle) use
    FewStepConsistencyScheduler."""
    from fewstep import distill
    from fewstep.export import export_run
    from fewstep.models.tiny import tiny_pipeline
    root = Path(__file__).resolve().parents[2]

    run_dir = tmp_path / "run"
    assert distill.main(["--config", str(root / "configs" / f"{recipe}.yaml"), f"run.output_dir={run_dir}",
                         "run.trackers=[]", "run.progress_bar=false", "run.max_steps=2", "run.checkpoint_every=0",
                         "run.num_samples=1", "run.sample_steps=[1,2]", "student.lora.rank=4", *extra]) == 0
    folder = export_run(run_dir, "lora", tmp_path / "export")
    loaded = load_export(folder, base=tiny_pipeline(family), check_base=True)
    loaded.pipe.set_progress_bar_config(disable=True)
    assert type(loaded.pipe.scheduler).__name__ == scheduler == read_info(folder)["scheduler"]["class_name"]
    check_round_trip(open_run(run_dir), loaded, monkeypatch)


def test_full_export_with_fewsteps_own_scheduler_loads_with_from_pretrained(tmp_path, monkeypatch):
    """A full SD 1.5 pipeline whose sampler needs fewstep's scheduler (mcm, TCD gamma 0.5): model_index.json names
    fewstep.schedulers, which plain diffusers from_pretrained loads once imported; the round trip still holds."""
    import diffusers

    import fewstep.schedulers
    from fewstep import distill
    from fewstep.export import export_run
    root = Path(__file__).resolve().parents[2]

    run_dir = tmp_path / "run"
    assert distill.main(["--config", str(root / "configs" / "mcm_sd15_tiny.yaml"), f"run.output_dir={run_dir}",
                         "run.trackers=[]", "run.progress_bar=false", "run.max_steps=2", "run.checkpoint_every=0",
                         "run.num_samples=1", "run.sample_steps=[1,2]", "student.lora.rank=4",
                         "objective.gamma=0.5"]) == 0
    folder = export_run(run_dir, "full", tmp_path / "export", fuse=True)
    assert '"fewstep.schedulers"' in (folder / "model_index.json").read_text()
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(folder))
    assert isinstance(pipe.scheduler, fewstep.schedulers.FewStepConsistencyScheduler)
    assert pipe.scheduler.config.gamma == 0.5
    assert "import fewstep.schedulers" in (folder / "README.md").read_text()
    check_round_trip(open_run(run_dir), load_export(folder), monkeypatch)


@pytest.mark.parametrize("recipe", ["cd_heun_long", "scm_dense_long"])
def test_bundled_pixel_space_dit_full_export_round_trips(recipe, tmp_path, monkeypatch):
    """The bundled task's student (a 1-channel pixel-space DiT, no VAE; CD on the even Heun grid, or sCM on the
    teacher re-timed to timestep = t, whose scheduler then says num_train_timesteps 1) exports as a full DiTPipeline
    folder that loads the way its model card says (vae=None) and reproduces the trainer's sampler."""
    import diffusers

    from fewstep import distill
    from fewstep.export import export_run
    root = Path(__file__).resolve().parents[2]

    overrides = []
    if recipe == "scm_dense_long":  # a re-timed teacher made the way the recipe says, fitted for one step only
        dense = tmp_path / "teacher_dense_time"
        proc = subprocess.run([sys.executable, "scripts/retime_teacher.py", "--out", str(dense), "--steps", "1",
                               "--batch-size", "2"], capture_output=True, text=True, cwd=root)
        assert proc.returncode == 0, proc.stderr
        overrides = [f"model.pretrained={dense}"]
    run_dir = tmp_path / "run"
    assert distill.main(["--config", str(root / "configs" / f"{recipe}_animal_mnist.yaml"), f"run.output_dir={run_dir}",
                         "run.trackers=[]", "run.progress_bar=false", "run.max_steps=2", "run.checkpoint_every=0",
                         "run.num_samples=0", "data.batch_size=4", *overrides]) == 0
    folder = export_run(run_dir, "full", tmp_path / "export")
    card = (folder / "README.md").read_text()
    assert "DiTPipeline.from_pretrained('EXPORT_DIR', vae=None)" in card
    pipe = diffusers.DiTPipeline.from_pretrained(str(folder), vae=None)
    assert pipe.vae is None and pipe.transformer.config.in_channels == 1
    loaded = load_export(folder)
    loaded.pipe.set_progress_bar_config(disable=True)
    run = open_run(run_dir)
    run.setup.data.next_batch(torch.Generator().manual_seed(0))  # the bundled data learns its shape from a batch
    check_round_trip(run, loaded, monkeypatch)
    assert loaded.pipe.scheduler.config.num_train_timesteps == run.setup.student.path.num_train_timesteps
