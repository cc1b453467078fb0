"""Images in a declared range -> features, under one recorded protocol.

The pipeline is the single place where range guards, the resize protocol and the feature
network meet, so reference stats and generated samples cannot take different paths.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

from torch import Tensor, nn

from fewstep.evaluation.features import FeatureExtractor
from fewstep.evaluation.images import check_pixel_range, validate_images
from fewstep.evaluation.resize import check_resize_mode, resize_for_features


class FeaturePipeline(nn.Module):
    """validate -> resize (protocol) -> extractor; also a torchmetrics `feature` module.

    It exposes num_features, so torchmetrics' FID/KID accept it without torch-fidelity
    (they only probe a dummy 299x299 image when that attribute is missing).
    """

    def __init__(self, extractor: FeatureExtractor, pixel_range: str, resize_mode: str = "clean",
                 clamp: bool = False) -> None:
        super().__init__()
        check_pixel_range(pixel_range)
        check_resize_mode(resize_mode)
        self.extractor, self.pixel_range, self.resize_mode, self.clamp = extractor, pixel_range, resize_mode, clamp
        self.num_features = extractor.num_features

    def forward(self, images: Tensor) -> Tensor:
        """N x C x H x W images in the declared range -> N x D float64 features."""
        images = validate_images(images, self.pixel_range, clamp=self.clamp)
        resized = resize_for_features(images, self.pixel_range, self.extractor.input_size, self.resize_mode)
        return self.extractor(resized.to(self.extractor.device)).double()

    def iter_features(self, batches: Iterable[Tensor]) -> Iterator[Tensor]:
        """Features batch by batch (keeps memory bounded for 50k-sample evaluations)."""
        for batch in batches:
            yield self(batch).cpu()

    def protocol(self) -> dict[str, Any]:
        """Everything that must agree between two feature sets for their distance to mean anything."""
        ext = self.extractor
        return {"extractor_id": ext.extractor_id, "extractor_checksum": ext.checksum,
                "feature_dim": int(ext.num_features), "input_size": int(ext.input_size),
                "resize_mode": self.resize_mode, "metric_name": ext.metric_name}
