from __future__ import annotations

import re
from pathlib import Path

from bridge.settings import settings_table

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"


def test_the_configuration_table_is_generated_from_the_settings() -> None:
    text = CONFIGURATION.read_text()
    start = text.index("<!-- settings-table:start -->\n") + len("<!-- settings-table:start -->\n")
    end = text.index("\n<!-- settings-table:end -->")
    assert text[start:end] == settings_table(), "regenerate with bridge.settings.settings_table()"


def test_the_readme_shows_the_two_commands() -> None:
    text = README.read_text()
    assert "make run" in text
    assert "make test" in text


def test_the_readme_is_short_and_every_section_is_in_one_place() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    headings = [
        line
        for path in [README, *sorted((ROOT / "docs").glob("*.md"))]
        for line in path.read_text().splitlines()
        if line.startswith("## ")
    ]
    assert len(headings) == len(set(headings)), "a section repeated in README.md or docs/"


def test_every_link_to_a_file_of_the_repository_resolves() -> None:
    broken = []
    for path in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", path.read_text()):
            external = target.startswith(("http://", "https://", "mailto:"))
            if not external and not (path.parent / target).exists():
                broken.append(f"{path.name}: {target}")
    assert broken == []
