"""How consistent is a bundled-task student, and on what time scale does its tangent live? (sCM, CD, any student)

Two measurements per run directory, on real train images of the bundled task:

1. ODE pairing: the RMS distance of the student's 1- and 2-step samples to the teacher's 64-step Euler solution
   (CFG as the run's objective) from the same noise, next to the teacher's own 1/4/16-step Euler. A consistency
   model is trained to map noise to that solution; a distribution-matching student is not.
2. Tangent scale: sCM's tangent term sigma_d cos t sin t dF/dt along the teacher ODE (sCM Sec. 4.2), with the student
   seen on TrigFlow, exact (one JVP) and as central differences of growing step h (the time offset is h cos t sin t).
   If the exact tangent is several times the difference over a few hundredths of a radian, the network wiggles in
   time on that scale, and the JVP-normalised sCM update is spent on the wiggles.

    python benchmarks/consistency_probe.py runs/scm_long_animal_mnist runs/cd_huber_longest_animal_mnist

Writes benchmarks/results/consistency_probe.json (or --name).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_label, write_result  # noqa: E402

SIGMA_DATA = 0.5
TEACHER_REFERENCE_STEPS = 64


def real_batch(n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """n train images in [-1, 1] with their labels (a fixed shuffle: the split is stored class by class)."""
    from fewstep.data.animal_mnist import load_animal_mnist, to_model_range

    images, labels = load_animal_mnist("train")
    pick = np.random.default_rng(0).permutation(len(images))[:n]
    return to_model_range(images[pick]), {"class_labels": torch.as_tensor(labels[pick])}


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt())


@torch.no_grad()
def ode_pairing(setup, guidance: float, n: int, teacher_rows: bool) -> dict[str, float]:
    from fewstep.sampling import sample_ode

    _, cond = real_batch(n)
    noise = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(3))

    def teacher(steps: int) -> torch.Tensor:
        return sample_ode(setup.teacher, noise, steps, cond, guidance, solver="euler", grid="uniform").clamp(-1, 1)

    reference = teacher(TEACHER_REFERENCE_STEPS)
    row = {f"teacher_{k}step": rms(teacher(k), reference) for k in ((1, 4, 16) if teacher_rows else ())}
    for steps in (1, 2):
        sample = setup.objective.sample(noise.clone(), steps, cond, torch.Generator().manual_seed(5)).clamp(-1, 1)
        row[f"student_{steps}step"] = rms(sample, reference)
    return row


def tangent_scale(setup, guidance: float, n: int, times: list[float], steps: list[float]) -> list[dict[str, float]]:
    """Mean per-sample norm of sigma_d cos t sin t dF/dt: exact (JVP) and by central differences of step h."""
    from fewstep.objectives.scm import TrigFlowDenoiser, student_tangent, tangent_attention

    student, teacher = TrigFlowDenoiser(setup.student, SIGMA_DATA), TrigFlowDenoiser(setup.teacher, SIGMA_DATA)
    x0, cond = real_batch(n)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for time in times:
        t = torch.full((n,), time)
        z = SIGMA_DATA * torch.randn(x0.shape, generator=generator)
        x_t = math.cos(time) * x0 + math.sin(time) * z  # TrigFlow's x_t (sCM Sec. 3)
        with torch.no_grad():
            dxt_dt = SIGMA_DATA * teacher.guided(x_t, t, cond, guidance)

            def norm(method: str, h: float = 1e-3) -> float:
                with tangent_attention(setup.student, "math"):
                    cs_df_dt = student_tangent(student, x_t, t, dxt_dt, cond, method=method, fd_step=h)
                return float((SIGMA_DATA * cs_df_dt).flatten(1).norm(dim=1).mean())

            row = {"t": time, "jvp": norm("jvp"), **{f"fd_{h:g}": norm("finite_difference", h) for h in steps}}
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="bundled-task run directories")
    parser.add_argument("--samples", type=int, default=200, help="noises for the ODE pairing")
    parser.add_argument("--tangent-samples", type=int, default=32)
    parser.add_argument("--times", default="0.2,0.8,1.1,1.4", help="TrigFlow times t (radians)")
    parser.add_argument("--steps", default="0.001,0.01,0.05,0.2", help="finite-difference steps h")
    parser.add_argument("--name", default="consistency_probe")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from fewstep.runs import load_run

    times = [float(v) for v in args.times.split(",")]
    steps = [float(v) for v in args.steps.split(",")]
    results = {}
    for i, run in enumerate(args.runs):
        setup = load_run(run)
        objective_config = yaml.safe_load((Path(run) / "config.yaml").read_text())["objective"]
        guidance = float(objective_config.get("guidance_scale", 1.0))  # the teacher ODE the run distilled
        results[run_label(run)] = {
            "run": str(run), "guidance_scale": guidance,
            "ode_pairing_rms": ode_pairing(setup, guidance, args.samples, teacher_rows=i == 0),
            "tangent_norm": tangent_scale(setup, guidance, args.tangent_samples, times, steps)}
        print(run_label(run), results[run_label(run)]["ode_pairing_rms"], flush=True)
    write_result(args.name, {"teacher_reference": f"{TEACHER_REFERENCE_STEPS}-step Euler, uniform grid",
                             "sigma_data": SIGMA_DATA, "runs": results})


if __name__ == "__main__":
    main()
