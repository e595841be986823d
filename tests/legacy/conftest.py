"""Fixtures of the legacy (django-chunked-upload) protocol tests; helpers in ``tests/support/legacy.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import legacy_urls


@pytest.fixture
def recorded() -> Iterator[list[tuple[str, bytes]]]:
    """The on_completion calls of the recording completion view during this test."""
    legacy_urls.COMPLETED.clear()
    yield legacy_urls.COMPLETED
    legacy_urls.COMPLETED.clear()
