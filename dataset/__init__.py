"""Matting data sets: atomic per-sample writer (one locked writer per folder), quality gate, trimaps, and RGBA file
formats (PNG, WebM alpha)."""

from .lock import DatasetLockedError
from .quality import QualityThresholds, gate, quality_scores
from .rgba_io import encode_rgba_png, read_webm_rgba, write_webm_rgba
from .trimap import MAX_TRIMAP_RADIUS, make_trimap
from .writer import (FAILED, FOLDERS, METADATA, REJECTED, MattingDatasetWriter, PreparedSample, SampleCapture,
                     SampleResult, capture_samples, check_layout, check_text, check_trimap_radius, open_writer,
                     prepare_sample)

__all__ = [
    "FAILED", "FOLDERS", "MAX_TRIMAP_RADIUS", "METADATA", "REJECTED", "DatasetLockedError", "MattingDatasetWriter",
    "PreparedSample", "QualityThresholds", "SampleCapture", "SampleResult", "capture_samples", "check_layout",
    "check_text", "check_trimap_radius",
    "encode_rgba_png", "gate", "make_trimap", "open_writer", "prepare_sample", "quality_scores", "read_webm_rgba",
    "write_webm_rgba",
]
