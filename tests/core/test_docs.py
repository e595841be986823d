"""The docs keep up with the code: every setting in the settings reference, every module in the layout."""

from __future__ import annotations

from pathlib import Path

from tusbridge import conf

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_the_settings_reference() -> None:
    reference = (ROOT / "docs" / "settings.md").read_text()
    listed = {name for name in conf.DEFAULTS if f"`TUSBRIDGE_{name}`" in reference}
    # Pairs share a row: `TUSBRIDGE_LEGACY_CHUNK_VIEW`, `_COMPLETE_VIEW`.
    listed |= {name for name in conf.DEFAULTS if f"`_{name.partition('_')[2]}`" in reference}
    assert set(conf.DEFAULTS) - listed == set()


def test_the_layout_lists_every_module() -> None:
    layout = (ROOT / "docs" / "architecture.md").read_text()
    modules = {str(path.relative_to(ROOT)) for path in (ROOT / "tusbridge").rglob("*.py")}
    assert {module for module in modules if f"`{module}`" not in layout} == set()
