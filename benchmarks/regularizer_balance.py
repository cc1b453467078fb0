"""How hard does a regulariser pull on an sCM student, next to sCM's own loss? (rCM, sCM + LADD)

For each checkpoint of a `rcm` / `scm_ladd` run, the gradient norms over the student's parameters of sCM's loss
(its learned log-variance included, at the checkpoint's u(t)) and of the regulariser's *unweighted* generator loss
are measured on a few training batches. The ratio says which `objective.regularizer_weight` makes the regulariser
matter: sCM's adaptive weighting divides its per-element mean by the learned variance of a residual normalised to
unit norm (mse ~ 1/D, so exp(-u) grows towards D), which makes sCM's gradient grow as training goes on.

    python benchmarks/regularizer_balance.py --run runs/rcm_long_animal_mnist
    python benchmarks/regularizer_balance.py --run runs/rcm_long_animal_mnist --checkpoints step-00000500,latest

Writes benchmarks/results/regularizer_balance_<run name>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_label, write_result  # noqa: E402


def gradient_norm(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> float:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return float(torch.stack([g.double().pow(2).sum() for g in grads if g is not None]).sum().sqrt())


def measure(run: Path, checkpoint: str, batches: int) -> dict[str, object]:
    from fewstep.runs import load_run

    setup = load_run(run, checkpoint, training_state=True)  # the regulariser's networks, sCM's warm-up state
    objective = setup.objective
    if not hasattr(objective, "regularizer"):
        raise SystemExit(f"{run} is not a regularised sCM run (objective.name rcm or scm_ladd)")
    params = [p for p in objective.trainable_networks()["student"].parameters() if p.requires_grad]
    scm, regularizer, logvar = [], [], []
    for i in range(batches):
        batch = setup.data.next_batch(torch.Generator().manual_seed(i))
        loss, logs = objective.scm_loss(batch, torch.Generator().manual_seed(i))
        scm.append(gradient_norm(loss, params))
        logvar.append(float(logs["scm/logvar"]))
        term, _ = objective.regularizer.loss("generator", batch, torch.Generator().manual_seed(10**6 + i))
        regularizer.append(gradient_norm(term, params))
    ratio = statistics.mean(scm) / statistics.mean(regularizer)
    row = {"checkpoint": checkpoint, "updates": int(objective.updates), "scm_grad_norm": statistics.mean(scm),
           "regularizer_grad_norm_unweighted": statistics.mean(regularizer), "scm_logvar": statistics.mean(logvar),
           "weight_for_equal_pull": ratio, "configured_weight": objective.regularizer_weight}
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished or running rcm / scm_ladd run directory")
    parser.add_argument("--checkpoints", default="latest", help="comma-separated checkpoint names")
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args()
    run = Path(args.run)
    rows = [measure(run, name, args.batches) for name in args.checkpoints.split(",")]
    write_result(f"regularizer_balance_{run_label(run)}", {"run": str(run), "batches": args.batches, "rows": rows})


if __name__ == "__main__":
    main()
