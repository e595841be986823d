"""Record stores: where upload records live (one module per backend)."""

from .base import AdvanceResult, RecordStore

__all__ = ["AdvanceResult", "RecordStore"]
