"""Data stores: where the bytes of unfinished uploads live (one module per backend)."""

from .base import Concatenator, DataStore, InfoKeeper, LocalFiles, Terminator, Writer

__all__ = ["Concatenator", "DataStore", "InfoKeeper", "LocalFiles", "Terminator", "Writer"]
