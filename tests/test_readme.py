from __future__ import annotations

from pathlib import Path

from bridge.settings import settings_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_configuration_table_is_generated_from_the_settings() -> None:
    text = README.read_text()
    start = text.index("<!-- settings-table:start -->\n") + len("<!-- settings-table:start -->\n")
    end = text.index("\n<!-- settings-table:end -->")
    assert text[start:end] == settings_table(), "regenerate with bridge.settings.settings_table()"


def test_the_readme_shows_the_two_commands() -> None:
    text = README.read_text()
    assert "make run" in text
    assert "make test" in text
