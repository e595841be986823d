"""The Node packages of the JavaScript clients (``example/``, ``tests/interop/``), installed with ``npm ci``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def npm_ci(npm: str, directory: Path) -> None:
    """``npm ci`` in ``directory`` as its package-lock.json says; fails the test with npm's output."""
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(f"npm ci in {directory} failed:\n{result.stdout}\n{result.stderr}", pytrace=False)
