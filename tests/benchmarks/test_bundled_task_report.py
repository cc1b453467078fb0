"""benchmarks/bundled_task_report.py: the best-run-per-objective table judges each objective's 1-step FD against the
bar, and the plot draws one run per objective."""

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def report(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("bundled_task_report")


def rows(cells):
    return [{"model": m, "steps": s, "fd": fd} for m, s, fd in cells]


def test_best_per_objective_takes_each_step_counts_lowest_run_and_judges_the_bar(report):
    rows_ = rows([("cd", 1, 6.8), ("cd", 2, 2.7), ("cd_long", 1, 3.5), ("cd_long", 2, 2.9), ("sid", 1, 1.2),
                  ("phased", 4, 1.3), ("teacher (Euler, CFG 1.5)", 1, 57.0), ("teacher (Euler, CFG 1.5)", 32, 1.0)])
    objective_of = {"cd": "cd", "cd_long": "cd", "sid": "sid", "phased": "phased_dmd"}
    lines = report.best_per_objective(rows_, objective_of)
    assert lines[0] == "| objective | 1 step | 2 steps | 4 steps | 1 step <= 1.50 |"
    # ordered by 1-step FD, runs without a 1-step cell last; a cell names the run that scored it
    assert lines[2:] == ["| sid | 1.20 (sid) |  |  | yes |",
                         "| cd | 3.50 (cd_long) | 2.70 (cd) |  | no |",
                         "| phased_dmd |  |  | 1.30 (phased) |  |"]
    assert report.best_per_objective(rows_, objective_of, bar_ratio=4.0)[3].endswith("| yes |")
    # the plot draws one run per objective: its best 1-step run, else its best cell at any step count
    assert report.plotted_runs(rows_, objective_of) == {"sid": "sid", "cd": "cd_long", "phased_dmd": "phased"}


def test_write_table_and_plot_draws_the_tables_and_one_line_per_objective(report, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    payload = {"num_eval": 1000, "reference": {"train_vs_test": 0.3, "noise_vs_test": 300.0},
               "rows": rows([("cd", 1, 6.8), ("cd_long", 1, 3.5), ("sid", 1, 1.2), ("sid", 2, 1.4),
                             ("teacher (Euler, CFG 1.5)", 1, 57.0), ("teacher (Euler, CFG 1.5)", 32, 1.0)]),
               "training": {"cd_long": {"train_steps": 3000, "started_from": "cd"}},
               "withdrawn": {"cd": {"steps": [2, 4], "why": "a fix"}}, "superseded": {"sid": "a change"},
               "inception_fid_vs_train": {"num_samples": 2048, "values": {"sid_1step": 90.0, "teacher_32step": 76.0}}}
    report.write_table_and_plot(payload, {"cd": "cd", "cd_long": "cd", "sid": "sid"})
    table = (tmp_path / "bundled_task.md").read_text().splitlines()
    assert "| cd_long | 3000 | cd | 3.50 |  |  |" in table  # every run, with its budget and start
    assert "| sid | 1.20 (sid \u2020) | 1.40 (sid \u2020) |  | yes |" in table  # the run marked superseded
    assert "| sid \u2020 |  |  | 1.20 | 1.40 |  |" in table  # steps 1, 2, 32
    assert "cd: 2, 4-step figures withdrawn (a fix)." in table
    assert ("\u2020 sid: trained by code that has changed since, so the recipe now trains differently "
            "(a change)." in table)
    assert table.index("| teacher_32step | 76.00 |") < table.index("| sid_1step \u2020 | 90.00 |")  # teacher first
    assert (tmp_path / "bundled_task.png").stat().st_size > 0
