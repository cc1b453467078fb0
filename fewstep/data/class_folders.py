"""Class-labelled folders: root/<class_name>/**/*.png, labels = index in the sorted class names.

Sorted names make labels identical on every machine and rank; the mapping is saved next to the
run (and into latent caches) because a class-conditional model is useless without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .errors import EmptyDatasetError
from .image_files import ImageFileDataset
from .images import is_image_file
from .imagefolder import find_images

LAYOUT = "root/<class_name>/*.png, one sub-folder per class (e.g. root/cat/1.png, root/dog/7.jpg)"


class ClassFolderDataset(ImageFileDataset):
    """Samples: pixel_values (C,H,W) in [-1,1], class_labels (long), original_size, crop_top_left."""

    def __init__(self, root: str | Path, resolution: int, **image_options: Any):
        root = Path(root)
        files = find_images(root, LAYOUT)
        loose = [f.name for f in files if f.parent == root]
        if loose:
            raise EmptyDatasetError(f"{len(loose)} images lie directly in {root} (first: {loose[:3]}); "
                                    f"expected layout: {LAYOUT}")
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        empty = [d.name for d in class_dirs if not any(is_image_file(f) for f in d.rglob("*"))]
        if empty:
            raise EmptyDatasetError(f"class folders without images under {root}: {empty}; they would shift "
                                    "every later label. Remove them or add images")
        self.class_names = [d.name for d in class_dirs]
        index = {name: i for i, name in enumerate(self.class_names)}
        self.labels = [index[f.relative_to(root).parts[0]] for f in files]
        super().__init__(files, resolution, **image_options)

    def extra(self, index: int) -> dict[str, Any]:
        return {"class_labels": torch.tensor(self.labels[index], dtype=torch.long)}

    def save_class_index(self, path: str | Path) -> None:
        """Write {"class_names": [...]} (label i = class_names[i]) for export and sampling."""
        Path(path).write_text(json.dumps({"class_names": self.class_names}, indent=2))


def load_class_index(path: str | Path) -> list[str]:
    """Read back the class names written by `save_class_index` (or stored in a latent cache index)."""
    return list(json.loads(Path(path).read_text())["class_names"])
