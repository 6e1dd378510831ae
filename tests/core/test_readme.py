"""The documented configuration table stays true to the settings."""

from __future__ import annotations

from pathlib import Path

from portside import DatabaseSettings

CONFIGURATION = Path(__file__).parents[2] / "docs" / "configuration.md"


def test_readme_documents_every_setting() -> None:
    text = CONFIGURATION.read_text()
    for name, field in DatabaseSettings.model_fields.items():
        assert f"`DATABASE_{name.upper()}`" in text, name
        assert field.description, name
        assert field.description in text, name
