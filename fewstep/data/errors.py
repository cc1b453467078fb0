"""Data errors that name the path, the expected layout and the fix.

Every error is a ValueError subclass so callers that only know "bad input" still catch it, while
tests (and users) can tell the failure modes apart.
"""

from __future__ import annotations

from collections import Counter


class DataError(ValueError):
    """Base class of every fewstep data-source error."""


class EmptyDatasetError(DataError):
    """A source yielded no samples at all (wrong path, wrong layout, empty shards)."""


class AllSamplesRejectedError(DataError):
    """Every sample seen was rejected by a filter (the silent 'training stuck at 0%' failure)."""


class UnreadableImageError(DataError):
    """An image file or tar member that PIL cannot decode."""


class MissingCaptionError(DataError):
    """Captions are required but some images have none."""


class CacheIntegrityError(DataError):
    """A latent cache whose index or shards do not match (truncated copy, edited file)."""


class RejectionTally:
    """Counts samples seen / accepted and rejections by reason.

    Why: the diffusers LCM webdataset script swallowed a KeyError('pwatermark') inside its filter
    and rejected every sample, so training hung at 0% with no message. Counting reasons lets us
    fail after `window` samples with nothing accepted, and say exactly why.
    """

    def __init__(self, source: str, window: int):
        self.source = source
        self.window = window
        self.seen = 0
        self.accepted = 0
        self.reasons: Counter[str] = Counter()

    def accept(self) -> None:
        self.seen += 1
        self.accepted += 1

    def reject(self, reason: str) -> None:
        self.seen += 1
        self.reasons[reason] += 1
        if self.accepted == 0 and self.seen >= self.window:
            raise self.error()

    def error(self) -> AllSamplesRejectedError:
        why = "; ".join(f"{count} x {reason}" for reason, count in self.reasons.most_common())
        return AllSamplesRejectedError(
            f"{self.source}: all {self.seen} samples seen were rejected ({why}). Fix the data or relax "
            "the filter in the data config (e.g. max_pwatermark / min_original_size: null, "
            "require_captions: false)")

    def check_pass_end(self) -> None:
        """Call when a full pass ended: nothing seen means empty shards, nothing kept means a bad filter."""
        if self.seen == 0:
            raise EmptyDatasetError(f"{self.source}: the shards hold no samples; expected tar members "
                                    "like 000001.jpg + 000001.txt (or .json with a 'caption'/'text' field)")
        if self.accepted == 0:
            raise self.error()
