"""Captioned image folders in the two conventions users bring.

1. Hugging Face `imagefolder`: root/metadata.jsonl (or metadata.csv) with a `file_name` column
   (path relative to root) and a caption column (`text` by default, as in diffusers' scripts).
2. Sidecar captions: root/**/name.png next to root/**/name.txt (kohya / LoRA-trainer style).

A small reader rather than `datasets.load_dataset("imagefolder")`: measured here, datasets
(+pandas, pyarrow, ~260 MB) loads offline in < 1 s but silently drops images that have no
metadata row, ignores sidecar .txt captions, and writes an Arrow copy under ~/.cache. We want
both conventions and a loud error for every uncaptioned image.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from .errors import EmptyDatasetError, MissingCaptionError
from .image_files import ImageFileDataset
from .images import is_image_file

CAPTION_COLUMNS = ("text", "prompt", "caption")
LAYOUT = ("root/*.png with root/metadata.jsonl lines {\"file_name\": \"a.png\", \"text\": \"a caption\"}, "
          "or sidecar captions root/a.png + root/a.txt")


def pick_column(columns: list[str], requested: str | None, where: str) -> str:
    """The caption column: the requested one, else the first of text/prompt/caption present."""
    if requested is not None:
        if requested not in columns:
            raise MissingCaptionError(f"{where} has no column {requested!r} (columns: {columns}); "
                                      "set data.caption_column to one of them")
        return requested
    for name in CAPTION_COLUMNS:
        if name in columns:
            return name
    raise MissingCaptionError(f"{where} has none of the caption columns {list(CAPTION_COLUMNS)} "
                              f"(columns: {columns}); set data.caption_column")


def read_metadata(root: Path, caption_column: str | None) -> dict[str, str] | None:
    """file_name -> caption from metadata.jsonl / metadata.csv, or None when there is neither."""
    present = [root / n for n in ("metadata.jsonl", "metadata.csv") if (root / n).is_file()]
    if not present:
        return None
    if len(present) > 1:
        raise ValueError(f"{root} has both metadata.jsonl and metadata.csv; keep one")
    path = present[0]
    with path.open(newline="", encoding="utf-8") as handle:
        if path.suffix == ".csv":
            rows = list(csv.DictReader(handle))
        else:
            rows = [json.loads(line) for line in handle if line.strip()]
    if not rows or "file_name" not in rows[0]:
        raise ValueError(f"{path} needs a 'file_name' column naming each image relative to {root}")
    column = pick_column(list(rows[0]), caption_column, str(path))
    captions = {}
    for line, row in enumerate(rows, start=1):
        if not (root / row["file_name"]).is_file():
            raise EmptyDatasetError(f"{path} row {line} names {row['file_name']!r}, which is not a file under {root}")
        captions[Path(row["file_name"]).as_posix()] = _clean(row.get(column))
    return captions


def _clean(caption: object) -> str | None:
    """A blank caption counts as missing: it is nearly always a broken export, not intent."""
    text = "" if caption is None else str(caption).strip()
    return text or None


def find_images(root: Path, layout: str) -> list[Path]:
    """Every image under root, sorted by relative path (stable order across machines)."""
    if not root.is_dir():
        raise EmptyDatasetError(f"data.path {root} is not a folder; expected layout: {layout}")
    files = sorted((p for p in root.rglob("*") if p.is_file() and is_image_file(p)
                    and not any(part.startswith(".") for part in p.relative_to(root).parts)),  # .ipynb_checkpoints
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise EmptyDatasetError(f"no images found under {root}; expected layout: {layout}")
    return files


class CaptionedImageFolder(ImageFileDataset):
    """Samples: pixel_values (C,H,W) in [-1,1], prompt, original_size, crop_top_left."""

    def __init__(self, root: str | Path, resolution: int, caption_column: str | None = None,
                 require_captions: bool = True, **image_options: Any):
        root = Path(root)
        files = find_images(root, LAYOUT)
        metadata = read_metadata(root, caption_column)
        if metadata is not None:
            captions = [metadata.get(f.relative_to(root).as_posix()) for f in files]
        else:
            captions = [_clean(f.with_suffix(".txt").read_text(encoding="utf-8"))
                        if f.with_suffix(".txt").is_file() else None for f in files]
        missing = [f.relative_to(root).as_posix() for f, c in zip(files, captions) if c is None]
        if missing and require_captions:
            raise MissingCaptionError(
                f"{len(missing)} of {len(files)} images under {root} have no caption (first: {missing[:3]}); "
                f"expected layout: {LAYOUT}. Or set data.require_captions: false to train them unconditionally")
        self.captions = [c if c is not None else "" for c in captions]
        super().__init__(files, resolution, **image_options)

    def extra(self, index: int) -> dict[str, Any]:
        return {"prompt": self.captions[index]}
