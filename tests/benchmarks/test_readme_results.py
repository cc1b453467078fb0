"""README.md's result tables are the benchmark scripts' own: every row of a results .md table appears in README.md
verbatim, and the README shows no row the results do not have (a re-run that is not copied over fails here).
benchmarks/readme_tables.py copies them over; its sync keeps README's headers and prose and refuses shape changes."""

import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TABLES = runpy.run_path(str(ROOT / "benchmarks" / "readme_tables.py"), run_name="readme_tables")
table_rows, synced_section, synced = TABLES["table_rows"], TABLES["synced_section"], TABLES["synced"]


def readme_section(start: str, end: str) -> str:
    readme = (ROOT / "README.md").read_text()
    return readme[readme.index(start):readme.index(end)]


@pytest.mark.parametrize("results,start,end", TABLES["SECTIONS"])
def test_readme_tables_match_the_committed_results(results, start, end):
    expected = table_rows((ROOT / "benchmarks" / "results" / results).read_text())
    # the README names the Inception table's column "Inception FID"; cells are the same
    shown = [row.replace("| Inception FID |", "| FID |") for row in table_rows(readme_section(start, end))]
    assert expected, f"no table rows in {results}"
    assert [r for r in expected if r not in shown] == [], f"README.md lacks rows of benchmarks/results/{results}"
    assert [r for r in shown if r not in expected] == [], f"README.md shows rows not in benchmarks/results/{results}"


def test_readme_is_what_the_sync_writes():
    readme = (ROOT / "README.md").read_text()
    assert synced(readme) == readme, "run python benchmarks/readme_tables.py"


def test_table_rows_reads_only_body_rows():
    text = "| a | b |\n|---|---|\n| x | 1 |\n| y | 2 |\n\nprose | not a row\n"
    assert table_rows(text) == ["| x | 1 |", "| y | 2 |"]


def test_sync_replaces_body_rows_keeps_header_and_prose():
    section = ("**S** intro\n\n| model | Inception FID |\n|---|---|\n| old | 1 |\n| gone | 2 |\n\nprose after\n\n"
               "| a | b |\n|---|---|\n| x | 1 |\n")
    results = "| model | FID |\n|---|---|\n| old | 0.5 |\n| new | 3 |\n\nnotes\n\n| a | b |\n|---|---|\n| y | 2 |\n"
    assert synced_section(section, results, "r.md") == (
        "**S** intro\n\n| model | Inception FID |\n|---|---|\n| old | 0.5 |\n| new | 3 |\n\nprose after\n\n"
        "| a | b |\n|---|---|\n| y | 2 |\n")


def test_sync_refuses_a_changed_shape():
    section = "| a | b |\n|---|---|\n| x | 1 |\n"
    with pytest.raises(ValueError, match="3 columns.*2"):
        synced_section(section, "| a | b | c |\n|---|---|---|\n| x | 1 | 2 |\n", "r.md")
    with pytest.raises(ValueError, match="1 tables.*2"):
        synced_section(section, "| a | b |\n|---|---|\n| x | 1 |\n\n| a | b |\n|---|---|\n| y | 1 |\n", "r.md")
