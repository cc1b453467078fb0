"""benchmarks/consistency_probe.py on a 1-step sCM run of the bundled task: its exact tangent equals a float64
central difference taken here, its difference columns are those differences, and its ODE pairing puts the
teacher's own Euler samples closer to the 64-step solution as the steps grow."""

import json
import math

import torch

from fewstep.objectives.scm import TrigFlowDenoiser
from fewstep.runs import load_run


def test_probe_tangent_and_ode_pairing(tiny_run, run_benchmark, results_dir):
    run = tiny_run("scm_animal_mnist", "scm_tiny", 1)
    probe = run_benchmark("consistency_probe", str(run), "--samples", "6", "--tangent-samples", "3", "--times", "0.8",
                          "--steps", "0.05")
    result = json.loads((results_dir / "consistency_probe.json").read_text())["runs"]["scm_tiny"]
    assert result["guidance_scale"] == 1.5

    pairing = result["ode_pairing_rms"]
    assert pairing["teacher_16step"] < pairing["teacher_4step"] < pairing["teacher_1step"]
    assert all(0 < pairing[f"student_{k}step"] < 2 for k in (1, 2))

    # the same tangent, by hand in float64: sigma_d (F(x + h v, t + h s) - F(x - h v, t - h s)) / 2h, v = s dx/dt
    setup = load_run(run)
    student = TrigFlowDenoiser(setup.student.double(), 0.5)
    teacher = TrigFlowDenoiser(setup.teacher.double(), 0.5)
    x0, cond = probe.real_batch(3)
    time = 0.8
    t = torch.full((3,), time, dtype=torch.float64)
    z = 0.5 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    x_t = (math.cos(time) * x0 + math.sin(time) * z).double()
    scale = math.cos(time) * math.sin(time)
    with torch.no_grad():
        velocity = scale * 0.5 * teacher.guided(x_t, t, cond, 1.5)

        def difference(h: float) -> float:
            ahead = student(x_t + h * velocity, t + h * scale, cond)
            behind = student(x_t - h * velocity, t - h * scale, cond)
            return float((0.5 * (ahead - behind) / (2 * h)).flatten(1).norm(dim=1).mean())

        exact, coarse = difference(1e-5), difference(0.05)
    row = result["tangent_norm"][0]
    assert row["t"] == time
    assert abs(row["jvp"] - exact) < 1e-3 * exact
    assert abs(row["fd_0.05"] - coarse) < 1e-3 * coarse
