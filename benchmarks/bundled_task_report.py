"""The bundled task's report: the markdown tables and the plot drawn from benchmarks/results/bundled_task.json.
benchmarks/bundled_task.py trains and evaluates and calls write_table_and_plot; `--render` redraws from the JSON."""

from __future__ import annotations

import json

from common import RESULTS

STUDENT_STEPS = (1, 2, 4)
DAGGER = " \u2020"  # marks a run trained by code that has changed since
BAR_RATIO = 1.5  # issue #4: every objective's 1-step FD <= 1.5x the teacher's 32-step FD


def inception_subject(key: str) -> str:
    """The model an Inception FID key names: "sid_2step" -> "sid", "teacher_32step" -> "teacher"."""
    return key.rsplit("_", 1)[0]


def steps_label(steps: int) -> str:
    return f"{steps} step{'s' if steps > 1 else ''}"


def best_cells(rows: list[dict], objective_of: dict[str, str]) -> dict[str, dict[int, tuple[float, str]]]:
    """Per objective, ordered by its best 1-step FD (objectives without one last): each student step count's
    lowest FD and the run that scored it."""
    best: dict[str, dict[int, tuple[float, str]]] = {}
    for r in rows:
        if r["model"] in objective_of and r["steps"] in STUDENT_STEPS:
            cells = best.setdefault(objective_of[r["model"]], {})
            if r["steps"] not in cells or r["fd"] < cells[r["steps"]][0]:
                cells[r["steps"]] = (r["fd"], r["model"])
    return dict(sorted(best.items(), key=lambda item: item[1].get(1, (float("inf"),))[0]))


def teacher_fd(rows: list[dict], steps: int) -> float:
    return next(r["fd"] for r in rows if r["model"].startswith("teacher") and r["steps"] == steps)


def marked(model: str, superseded: dict[str, str]) -> str:
    """A run's name, with a dagger when code it was trained by has changed since."""
    return model + DAGGER if model in superseded else model


def best_per_objective(rows: list[dict], objective_of: dict[str, str], bar_ratio: float = BAR_RATIO,
                       superseded: dict[str, str] | None = None) -> list[str]:
    """A markdown table: per objective, its lowest FD at each student step count and the run that scored it
    (daggered if superseded), and whether that 1-step FD meets the issue's bar (<= bar_ratio x the teacher's
    32-step FD)."""
    bar = bar_ratio * teacher_fd(rows, 32)
    lines = [f"| objective | {' | '.join(map(steps_label, STUDENT_STEPS))} | 1 step <= {bar:.2f} |",
             "|---|" + "---|" * (len(STUDENT_STEPS) + 1)]
    for name, cells in best_cells(rows, objective_of).items():
        shown = [f"{cells[s][0]:.2f} ({marked(cells[s][1], superseded or {})})" if s in cells else ""
                 for s in STUDENT_STEPS]
        met = "" if 1 not in cells else ("yes" if cells[1][0] <= bar else "no")
        lines.append(f"| {name} | {' | '.join(shown)} | {met} |")
    return lines


def plotted_runs(rows: list[dict], objective_of: dict[str, str]) -> dict[str, str]:
    """One run per objective for the plot: the one with its best 1-step FD (else its best cell at any step count),
    so each line is one student's curve and the plot stays readable as runs accumulate."""
    return {name: min(cells.values())[1] if 1 not in cells else cells[1][1]
            for name, cells in best_cells(rows, objective_of).items()}


def write_table_and_plot(payload: dict, objective_of: dict[str, str]) -> None:
    """bundled_task.md (best run per objective, every run, Inception FIDs) and bundled_task.png (one line per
    objective); `objective_of` maps each run to its recipe's objective.name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in payload["rows"]))
    steps = sorted({r["steps"] for r in payload["rows"]})
    table = {(r["model"], r["steps"]): r["fd"] for r in payload["rows"]}
    superseded = payload.get("superseded", {})
    lines = ["Best run per objective (its recipe's objective.name; lowest FD at each step count):", "",
             *best_per_objective(payload["rows"], objective_of, superseded=superseded), "", "Every run:", "",
             "| model | training steps | after | " + " | ".join(map(steps_label, steps)) + " |",
             "|---|---|---|" + "---|" * len(steps)]
    for m in models:
        training = payload["training"].get(m, {})
        lines.append(f"| {marked(m, superseded)} | {training.get('train_steps', '')} | "
                     f"{training.get('started_from', '')} | "
                     + " | ".join(f"{table[(m, s)]:.2f}" if (m, s) in table else "" for s in steps) + " |")
    ref = payload["reference"]
    reasons: dict[tuple, list[str]] = {}
    for m, w in payload.get("withdrawn", {}).items():
        reasons.setdefault((tuple(w["steps"]), w["why"]), []).append(m)
    for (withdrawn_steps, why), ms in reasons.items():
        lines.append(f"\n{', '.join(ms)}: {', '.join(map(str, withdrawn_steps))}-step figures withdrawn ({why}).")
    for why in dict.fromkeys(superseded.values()):
        ms = [m for m, w in superseded.items() if w == why]
        lines.append(f"\n{DAGGER.strip()} {', '.join(ms)}: trained by code that has changed since, so the recipe "
                     f"now trains differently ({why}).")
    lines.append(f"\nFloor (real train vs test): {ref['train_vs_test']:.2f}; "
                 f"noise vs test: {ref['noise_vs_test']:.1f}; {payload['num_eval']} samples per cell.")
    inception = payload.get("inception_fid_vs_train")
    if inception:
        lines += ["", f"Inception FID vs {inception['num_samples']} train images ({inception['num_samples']} samples "
                  "each; grey as RGB, clean-fid resize):", "", "| model (steps) | FID |", "|---|---|"]
        rank = {m: i for i, m in enumerate(["real_train", "teacher", *models])}  # floor, teacher, the FD table's order
        values = inception["values"]
        for k in sorted(values, key=lambda k: rank.get(inception_subject(k), len(rank))):
            lines.append(f"| {k}{DAGGER if inception_subject(k) in superseded else ''} | {values[k]:.2f} |")
    (RESULTS / "bundled_task.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colours, markers = plt.get_cmap("tab20").colors, "osD^v<>P"
    teacher = next(m for m in models if m.startswith("teacher"))
    lines_drawn = {f"{name} ({marked(run, superseded)})": run
                   for name, run in plotted_runs(payload["rows"], objective_of).items()}
    for i, (label, m) in enumerate([*lines_drawn.items(), (teacher, teacher)]):
        pts = sorted((s, v) for (mm, s), v in table.items() if mm == m)
        look = ({"color": "black", "marker": "o", "lw": 2.5} if m == teacher
                else {"color": colours[i % 20], "marker": markers[i % 8]})
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, ms=5, **look)
    ax.axhline(BAR_RATIO * teacher_fd(payload["rows"], 32), color="black", ls=":",
               label=f"{BAR_RATIO}x teacher's 32 steps")
    ax.axhline(ref["train_vs_test"], color="gray", ls="--", label="real data (floor)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("FD (classifier features)")
    ax.set_title("each objective's best 1-step run (every run: bundled_task.md)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes, not over the lines
    fig.savefig(RESULTS / "bundled_task.png", dpi=120, bbox_inches="tight")
    print(json.dumps({"table": str(RESULTS / "bundled_task.md")}))
