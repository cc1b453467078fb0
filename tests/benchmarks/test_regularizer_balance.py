"""benchmarks/regularizer_balance.py on a 2-step rCM run of the bundled task: its gradient norms equal a plain
backward() through each term (the student's .grad), and the ratio it reports is theirs."""

import json

import torch

from fewstep.runs import load_run


def _grad_norm_by_backward(loss: torch.Tensor, student: torch.nn.Module) -> float:
    student.zero_grad(set_to_none=True)
    loss.backward()
    return float(sum(p.grad.double().pow(2).sum() for p in student.parameters() if p.grad is not None) ** 0.5)


def test_balance_matches_backward_through_each_term(tiny_run, run_benchmark, results_dir):
    run = tiny_run("rcm_animal_mnist", "rcm_tiny", 2, "objective.tangent_warmup_steps=1")
    run_benchmark("regularizer_balance", "--run", str(run), "--batches", "2")
    row = json.loads((results_dir / "regularizer_balance_rcm_tiny.json").read_text())["rows"][0]

    setup = load_run(run, training_state=True)
    objective = setup.objective
    networks = objective.trainable_networks()
    assert int(objective.updates) == row["updates"] == 2 and objective.warmup == 1.0  # the tangent term is on
    scm, regularizer = [], []
    for i in range(2):
        batch = setup.data.next_batch(torch.Generator().manual_seed(i))
        scm.append(_grad_norm_by_backward(objective.scm_loss(batch, torch.Generator().manual_seed(i))[0],
                                          networks["student"]))
        term = objective.regularizer.loss("generator", batch, torch.Generator().manual_seed(10**6 + i))[0]
        regularizer.append(_grad_norm_by_backward(term, networks["student"]))
    assert abs(row["scm_grad_norm"] - sum(scm) / 2) < 1e-6 * row["scm_grad_norm"]
    assert abs(row["regularizer_grad_norm_unweighted"] - sum(regularizer) / 2) < 1e-6 * sum(regularizer)
    assert abs(row["weight_for_equal_pull"] - sum(scm) / sum(regularizer)) < 1e-6 * row["weight_for_equal_pull"]
    assert row["configured_weight"] == objective.regularizer_weight
