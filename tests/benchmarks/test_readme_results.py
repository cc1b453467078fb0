"""README.md's result tables are the benchmark scripts' own: every row of a results .md table appears in README.md
verbatim, and the README shows no row the results do not have (a re-run that is not copied over fails here)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def table_rows(text: str) -> list[str]:
    """The body rows of every markdown table in text (header and rule rows left out)."""
    lines = [line.strip() for line in text.splitlines()]
    return [line for i, line in enumerate(lines) if line.startswith("| ") and not line.startswith("|---")
            and not (i + 1 < len(lines) and lines[i + 1].startswith("|---"))]


def readme_section(start: str, end: str) -> str:
    readme = (ROOT / "README.md").read_text()
    return readme[readme.index(start):readme.index(end)]


@pytest.mark.parametrize("results,start,end", [
    ("bundled_task.md", "**Bundled task**", "**Evaluation noise**"),
    ("fd_seed_spread.md", "**Evaluation noise**", "**Near the bar**"),
    ("fd_seed_spread_near_bar.md", "**Near the bar**", "**Every objective on the exact toy**"),
    ("toy_objectives.md", "**Every objective on the exact toy**", "**Loop overhead**")])
def test_readme_tables_match_the_committed_results(results, start, end):
    expected = table_rows((ROOT / "benchmarks" / "results" / results).read_text())
    # the README names the Inception table's column "Inception FID"; cells are the same
    shown = [row.replace("| Inception FID |", "| FID |") for row in table_rows(readme_section(start, end))]
    assert expected, f"no table rows in {results}"
    assert [r for r in expected if r not in shown] == [], f"README.md lacks rows of benchmarks/results/{results}"
    assert [r for r in shown if r not in expected] == [], f"README.md shows rows not in benchmarks/results/{results}"


def test_table_rows_reads_only_body_rows():
    text = "| a | b |\n|---|---|\n| x | 1 |\n| y | 2 |\n\nprose | not a row\n"
    assert table_rows(text) == ["| x | 1 |", "| y | 2 |"]
