"""Data stores: where the bytes of unfinished uploads live (one module per backend)."""

from .base import Concatenator, DataStore, Terminator, Writer

__all__ = ["Concatenator", "DataStore", "Terminator", "Writer"]
