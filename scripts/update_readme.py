"""Regenerate the configuration table of docs/configuration.md from the settings (`make docs`)."""

from pathlib import Path

from bridge.settings import settings_table

START, END = "<!-- settings-table:start -->\n", "\n<!-- settings-table:end -->"
readme = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
text = readme.read_text()
head, rest = text.split(START, 1)
_, tail = rest.split(END, 1)
readme.write_text(head + START + settings_table() + END + tail)
