"""The `data:` section of a run config, validated (pydantic v2, unknown keys rejected).

One model for every kind so recipes stay flat; each field says which kinds read it. Mistakes
raise a pydantic ValidationError whose message names the key and what is allowed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DATA_KINDS = ("imagefolder", "webdataset", "prompts", "class_folders", "latent_cache")
IMAGE_KINDS = ("imagefolder", "webdataset", "class_folders")


class DataConfig(BaseModel):
    """Where samples come from and how they are batched; see fewstep/data/README.md for layouts."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    path: str  # folder, prompt file, latent-cache folder, or shard pattern like "shards/{00000..00099}.tar"
    resolution: int | None = Field(None, gt=0)  # image kinds: square side, or the bucket area's side
    batch_size: int = Field(8, gt=0)  # per rank
    num_workers: int = Field(0, ge=0)
    shuffle: bool = True
    channels: Literal[1, 3] = 3
    # captions (imagefolder metadata column; prompt .jsonl/.csv column); None: first of text/prompt/caption
    caption_column: str | None = None
    require_captions: bool = True  # imagefolder / webdataset: a sample without caption is an error / rejected
    # aspect buckets (imagefolder, class_folders); latent_cache buckets automatically by stored shape
    buckets: bool = False
    bucket_step: int = Field(64, gt=0)
    max_aspect_ratio: float = Field(2.0, ge=1.0)
    # webdataset
    shuffle_buffer: int = Field(1000, ge=1)
    max_pwatermark: float | None = None  # reject when json 'pwatermark' is above (or missing)
    min_original_size: int | None = None  # reject when json 'original_width'/'width' (or height) is below
    skip_bad_images: bool = False  # count and skip undecodable images instead of raising
    reject_check_window: int = Field(1000, ge=1)  # fail if this many samples were seen and none kept
    # latent_cache
    verify_cache: bool = True  # sha256 of every shard against the index at load time

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in DATA_KINDS:
            raise ValueError(f"unknown data kind {kind!r}; allowed kinds: {', '.join(DATA_KINDS)}")
        return kind

    @model_validator(mode="after")
    def _consistent(self) -> "DataConfig":
        if self.kind in IMAGE_KINDS and self.resolution is None:
            raise ValueError(f"data.resolution is required for kind={self.kind} (e.g. resolution: 512)")
        if self.buckets and self.kind not in ("imagefolder", "class_folders"):
            raise ValueError(f"data.buckets needs image sizes up front, so it works for imagefolder and "
                             f"class_folders, not {self.kind}; cache latents of a bucketed imagefolder instead")
        if self.buckets and (self.resolution % self.bucket_step or self.resolution < self.bucket_step):
            raise ValueError(f"data.resolution {self.resolution} must be a multiple of data.bucket_step "
                             f"{self.bucket_step} when buckets: true")
        return self
