"""Prompt-only sources for data-free objectives (DMD, SiD, ...): .txt, .jsonl or .csv files.

The sampler is the endless, seeded, rank-sharded StreamBatchPlan; this module only reads files.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from torch.utils.data import Dataset

from .errors import EmptyDatasetError, MissingCaptionError
from .imagefolder import pick_column

PROMPT_FORMATS = ("a .txt file (one prompt per line), .jsonl (a 'prompt' or 'text' field per line) "
                  "or .csv (a 'prompt' or 'text' column)")
PROMPT_COLUMNS = ("prompt", "text", "caption")


def read_prompts(path: str | Path, column: str | None = None) -> list[str]:
    """All non-empty prompts of the file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise EmptyDatasetError(f"no prompt file at {path}; expected {PROMPT_FORMATS}")
    suffix = path.suffix.lower()
    with path.open(newline="", encoding="utf-8") as handle:
        if suffix == ".txt":
            prompts = [line.strip() for line in handle]
        elif suffix in (".jsonl", ".csv"):
            rows = list(csv.DictReader(handle)) if suffix == ".csv" else [json.loads(l) for l in handle if l.strip()]
            if not rows:
                raise EmptyDatasetError(f"{path} holds no rows; expected {PROMPT_FORMATS}")
            name = column if column is not None else next((c for c in PROMPT_COLUMNS if c in rows[0]), None)
            name = pick_column(list(rows[0]), name, str(path))
            missing = [i for i, row in enumerate(rows, start=1) if not isinstance(row.get(name), str)]
            if missing:
                raise MissingCaptionError(f"{path}: rows {missing[:5]} have no string {name!r} field")
            prompts = [row[name].strip() for row in rows]
        else:
            raise ValueError(f"unsupported prompt file {path}; expected {PROMPT_FORMATS}")
    prompts = [p for p in prompts if p]
    if not prompts:
        raise EmptyDatasetError(f"{path} holds no non-empty prompts; expected {PROMPT_FORMATS}")
    return prompts


class PromptDataset(Dataset):
    """Samples: {"prompt": str}; collates to {"prompt": list[str]}."""

    def __init__(self, prompts: list[str]):
        self.prompts = prompts

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict[str, str]:
        return {"prompt": self.prompts[index]}
