"""The bundled Animal-MNIST task: data integrity, split, feature network and committed teacher."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from fewstep.data import animal_mnist as am

pytestmark = pytest.mark.skipif(importlib.util.find_spec("animal_mnist") is None,
                                reason="animal-mnist wheel not installed: pip install --no-deps animal-mnist")


@pytest.fixture(scope="module")
def all_data() -> tuple[np.ndarray, np.ndarray]:
    return am.load_all()


@pytest.fixture(scope="module")
def test_dataset() -> am.AnimalMNIST:
    return am.AnimalMNIST("test")


def test_raw_arrays_are_the_documented_dataset(all_data):
    images, labels = all_data
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [1000] * 10
    assert len(am.CLASS_NAMES) == am.NUM_CLASSES == 10 and am.NULL_CLASS == 10


def test_tampered_file_is_rejected_before_unpickling(tmp_path):
    source = am.data_dir() / am.LABELS_FILE
    tampered = tmp_path / am.LABELS_FILE
    data = bytearray(source.read_bytes())
    data[-5] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(am.ChecksumError, match="sha256"):
        am.load_verified_array(tampered, am.PINNED_SHA256[am.LABELS_FILE])
    shutil.copy(source, tmp_path / "intact.gz")  # the same check passes on the untouched bytes
    assert am.load_verified_array(tmp_path / "intact.gz", am.PINNED_SHA256[am.LABELS_FILE]).shape == (10000,)


def test_restricted_unpickler_refuses_code_even_with_matching_checksum(tmp_path):
    evil = tmp_path / "evil.gz"
    with gzip.open(evil, "wb") as f:
        f.write(pickle.dumps(os.getcwd))  # a global that is not a numpy array constructor
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        am.load_verified_array(evil, am.sha256_file(evil))


def test_missing_wheel_error_names_the_fix(monkeypatch):
    monkeypatch.setattr(am.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps animal-mnist"):
        am.data_dir()


def test_split_is_disjoint_stratified_and_reproducible(all_data):
    _, labels = all_data
    train, test = am.load_split_indices("train"), am.load_split_indices("test")
    assert len(train) == 9000 and len(test) == 1000
    assert not set(train) & set(test) and set(train) | set(test) == set(range(10000))
    assert np.bincount(labels[test]).tolist() == [100] * 10
    regenerated = am.make_split(labels, test_per_class=100, seed=0)  # the committed file is this function's output
    assert regenerated["train"] == train.tolist() and regenerated["test"] == test.tolist()
    assert am.make_split(labels, 100, seed=1)["test"] != regenerated["test"]


def test_dataset_rows_in_model_range(test_dataset):
    images, labels = am.load_animal_mnist("test")
    ds = test_dataset
    row = ds[3]
    assert len(ds) == 1000 and row["pixel_values"].shape == (1, 28, 28) and row["class_labels"].dtype == torch.int64
    assert ds.pixel_values.min() == -1.0 and ds.pixel_values.max() == 1.0
    np.testing.assert_allclose((row["pixel_values"][0].numpy() + 1) * 127.5, images[3], atol=1e-4)
    assert row["class_labels"].item() == labels[3]


def test_feature_network_reproduces_recorded_test_accuracy(test_dataset):
    manifest = json.loads(am.CLASSIFIER_MANIFEST_PATH.read_text())
    classifier = am.load_classifier()
    ds = test_dataset
    with torch.no_grad():
        accuracy = (classifier(ds.pixel_values).argmax(1) == ds.class_labels).float().mean().item()
    assert abs(accuracy - manifest["test_accuracy"]) <= 1e-3 and accuracy > 0.85
    features = am.load_feature_network()(ds.pixel_values[:8])
    assert features.shape == (8, manifest["feature_dim"]) and torch.isfinite(features).all()


def test_feature_network_rejects_tampered_weights(tmp_path, monkeypatch):
    tampered = tmp_path / "classifier.safetensors"
    data = bytearray(am.CLASSIFIER_PATH.read_bytes())
    data[-1] ^= 0x01
    tampered.write_bytes(bytes(data))
    monkeypatch.setattr(am, "CLASSIFIER_PATH", tampered)
    with pytest.raises(am.ChecksumError):
        am.load_feature_network()


def test_committed_teacher_loads_and_matches_manifest():
    from diffusers import DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler

    manifest = json.loads((am.TEACHER_DIR / "manifest.json").read_text())
    assert am.sha256_file(am.TEACHER_DIR / manifest["weights"]) == manifest["sha256"]
    model = DiTTransformer2DModel.from_pretrained(am.TEACHER_DIR / "transformer").eval()
    assert sum(p.numel() for p in model.parameters()) == manifest["params"]
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(am.TEACHER_DIR / "scheduler")
    assert scheduler.config.shift == 1.0
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, 9, am.NULL_CLASS])
    with torch.no_grad():
        velocity = model(x, torch.full((4,), 500.0), labels).sample
    assert velocity.shape == x.shape and torch.isfinite(velocity).all()
    assert not torch.allclose(velocity[0], velocity[1])  # the class label reaches the output
    assert manifest["fd"]["uniform_cfg1"]["32"] < manifest["fd_noise_vs_test"] / 10  # a trained teacher, not noise


def test_manifest_figures_reproduce_with_the_shared_evaluation():
    """The manifest's teacher FDs and floor are what fewstep.evaluation.animal_mnist measures (the demo and the
    bundled-task benchmark use the same path), not a separate protocol: re-measure the 1-step cell and the floor."""
    from fewstep.evaluation.animal_mnist import fd_to_test, floor_and_ceiling, teacher_samples
    from fewstep.models import load_denoiser

    manifest = json.loads((am.TEACHER_DIR / "manifest.json").read_text())
    n = manifest["eval_protocol"]["num_samples"]
    teacher = load_denoiser("dit", str(am.TEACHER_DIR)).eval()
    images = teacher_samples(teacher, 1, 1.5, n)
    # float summation order differs across thread counts: agreement to ~1e-4 relative, not bit-exact
    assert fd_to_test(images) == pytest.approx(manifest["fd"]["uniform_cfg1.5"]["1"], rel=1e-3)
    reference = floor_and_ceiling(n)
    assert reference["train_vs_test"] == pytest.approx(manifest["fd_train_vs_test"], rel=1e-3)
    assert reference["noise_vs_test"] == pytest.approx(manifest["fd_noise_vs_test"], rel=1e-3)
