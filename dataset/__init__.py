"""Matting data sets: atomic per-sample writer, quality gate, trimaps, and RGBA file formats (PNG, WebM alpha)."""

from .quality import QualityThresholds, gate, quality_scores
from .rgba_io import encode_rgba_png, read_webm_rgba, write_webm_rgba
from .trimap import make_trimap
from .writer import FOLDERS, METADATA, REJECTED, MattingDatasetWriter, SampleResult

__all__ = [
    "FOLDERS", "METADATA", "REJECTED", "MattingDatasetWriter", "QualityThresholds", "SampleResult",
    "encode_rgba_png", "gate", "make_trimap", "quality_scores", "read_webm_rgba", "write_webm_rgba",
]
