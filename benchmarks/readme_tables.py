"""README.md's result tables are copies of the benchmark scripts' own markdown results: this copies them over.

    python benchmarks/readme_tables.py           # rewrite README.md's tables from benchmarks/results/*.md
    python benchmarks/readme_tables.py --check   # exit 1, naming the sections that differ, and write nothing

Each README section (between two bold headings) holds the tables of one results file, in the same order. Their body
rows are replaced by the results' rows; the README's header and rule rows stay (README names the Inception column
"Inception FID"), unless the results table has another number of columns: then that is an error, to be fixed by
hand. Prose is never touched. tests/benchmarks/test_readme_results.py fails while README.md is not in sync.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# (results file, README section start, section end): each results table appears in that README section
SECTIONS: list[tuple[str, str, str]] = [
    ("bundled_task.md", "**Bundled task**", "**Evaluation noise**"),
    ("fd_seed_spread.md", "**Evaluation noise**", "**Near the bar**"),
    ("fd_seed_spread_near_bar.md", "**Near the bar**", "**Every objective on the exact toy**"),
    ("toy_objectives.md", "**Every objective on the exact toy**", "**Loop overhead**"),
]


def is_rule(line: str) -> bool:
    return line.strip().startswith("|---")


def table_spans(lines: list[str]) -> list[tuple[int, int]]:
    """[start, end) line ranges of every markdown table: a header row, a rule row, then body rows."""
    spans, i = [], 0
    while i < len(lines):
        if lines[i].strip().startswith("| ") and i + 1 < len(lines) and is_rule(lines[i + 1]):
            end = i + 2
            while end < len(lines) and lines[end].strip().startswith("| "):
                end += 1
            spans.append((i, end))
            i = end
        else:
            i += 1
    return spans


def table_rows(text: str) -> list[str]:
    """The body rows of every markdown table in text (header and rule rows left out)."""
    lines = [line.strip() for line in text.splitlines()]
    return [lines[i] for start, end in table_spans(lines) for i in range(start + 2, end)]


def columns(row: str) -> int:
    return row.strip().strip("|").count("|") + 1


def synced_section(section: str, results: str, name: str) -> str:
    """section with its tables' body rows replaced by those of the tables in results, in order."""
    lines, source = section.split("\n"), [line.strip() for line in results.splitlines()]
    spans, source_spans = table_spans(lines), table_spans(source)
    if len(spans) != len(source_spans):
        raise ValueError(f"README.md's section for {name} has {len(spans)} tables, benchmarks/results/{name} has "
                         f"{len(source_spans)}: add or remove the table in README.md by hand, then re-run")
    for (start, end), (source_start, source_end) in reversed(list(zip(spans, source_spans))):
        if columns(lines[start]) != columns(source[source_start]):
            raise ValueError(f"a table of benchmarks/results/{name} has {columns(source[source_start])} columns, "
                             f"README.md's has {columns(lines[start])}: copy its header row into README.md by hand")
        lines[start + 2:end] = source[source_start + 2:source_end]
    return "\n".join(lines)


def synced(readme: str, results_dir: Path = RESULTS) -> str:
    """README text with every section's tables copied from its results file."""
    for name, start, end in SECTIONS:
        begin = readme.index(start)
        stop = readme.index(end, begin)
        section = synced_section(readme[begin:stop], (results_dir / name).read_text(), name)
        readme = readme[:begin] + section + readme[stop:]
    return readme


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report whether README.md is in sync")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args()
    readme = args.readme.read_text()
    updated = synced(readme)
    if args.check:
        stale = [name for name, start, end in SECTIONS
                 if readme[readme.index(start):readme.index(end)] != updated[updated.index(start):updated.index(end)]]
        if stale:
            sys.exit(f"README.md's tables differ from benchmarks/results/{', '.join(stale)}: "
                     "run python benchmarks/readme_tables.py")
        print("README.md's tables match benchmarks/results/")
        return
    if updated != readme:
        tmp = args.readme.with_suffix(".md.tmp")
        tmp.write_text(updated)
        tmp.replace(args.readme)
    print(f"{args.readme}: {'updated' if updated != readme else 'already in sync'}")


if __name__ == "__main__":
    main()
