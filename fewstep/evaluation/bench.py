"""Bench report: FD/FID x steps x checkpoints/methods as a markdown table and a PNG plot.

Uses matplotlib's object API with the Agg canvas, so it never touches the global backend
of a caller's interactive session.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

MARKDOWN_NAME, PLOT_NAME = "bench.md", "bench.png"


def _rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        for row in result["results"]:
            rows.append({"name": result.get("name") or "?", **row})
    if not rows:
        raise ValueError("bench_table got no result rows; pass the dicts returned by evaluate_generator")
    return rows


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One line per (name, steps): metric value, KID, latency in ms/image, sample count."""
    protocol = results[0]["protocol"]
    header = [f"Features: `{protocol['extractor_id']}`, resize `{protocol['resize_mode']}`; "
              f"reference `{results[0]['reference']['dataset']}` ({results[0]['reference']['num_samples']} samples).",
              "", "| name | steps | metric | value | KID | latency (ms/img) | samples |",
              "|---|---:|---|---:|---:|---:|---:|"]
    lines = []
    for row in _rows(results):
        kid = f"{row['kid_mean']:.5f} ± {row['kid_std']:.5f}" if "kid_mean" in row else "–"
        lat = row.get("latency_s_per_image")
        lat_s = f"{1000 * lat:.3g}" if lat is not None else "–"
        steps = "–" if row["steps"] is None else row["steps"]
        lines.append(f"| {row['name']} | {steps} | {row['metric']} | {row['fd']:.3f} | {kid} | {lat_s} | "
                     f"{row['num_samples']} |")
    return "\n".join(header + lines) + "\n"


def bench_plot(results: list[dict[str, Any]], path: str | Path) -> Path:
    """FD vs steps (left) and latency vs steps (right), one line per name."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax_fd, ax_lat = fig.subplots(1, 2)
    metric = _rows(results)[0]["metric"]
    all_steps: set[int] = set()
    for result in results:
        rows = sorted((r for r in result["results"] if r["steps"] is not None), key=lambda r: r["steps"])
        steps = [r["steps"] for r in rows]
        all_steps.update(steps)
        ax_fd.plot(steps, [r["fd"] for r in rows], marker="o", label=result.get("name") or "?")
        lat = [1000 * r["latency_s_per_image"] for r in rows if r.get("latency_s_per_image") is not None]
        if len(lat) == len(steps):
            ax_lat.plot(steps, lat, marker="o", label=result.get("name") or "?")
    for ax, ylabel in ((ax_fd, metric), (ax_lat, "latency (ms / image)")):
        ax.set_xlabel("sampling steps")
        ax.set_ylabel(ylabel)
        ax.set_xticks(sorted(all_steps))
        ax.grid(alpha=0.3)
    ax_fd.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def bench_table(results: list[dict[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """Write bench.md and bench.png under out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md_path = out / MARKDOWN_NAME
    md_path.write_text(markdown_table(results))
    return {"markdown": md_path, "plot": bench_plot(results, out / PLOT_NAME)}
