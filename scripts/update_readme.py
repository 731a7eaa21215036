"""Regenerate what is generated (`make docs`): the configuration table of
docs/configuration.md from the settings, and asyncapi.yaml from the schemas' declared
notification types."""

from pathlib import Path

import yaml

from bridge.notifications.asyncapi import document
from bridge.settings import settings_table

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- settings-table:start -->\n", "\n<!-- settings-table:end -->"
readme = ROOT / "docs" / "configuration.md"
text = readme.read_text()
head, rest = text.split(START, 1)
_, tail = rest.split(END, 1)
readme.write_text(head + START + settings_table() + END + tail)
(ROOT / "asyncapi.yaml").write_text(
    "# Generated from the schemas in avro/ by `make docs` (bridge/notifications/asyncapi.py): "
    "do not edit.\n" + yaml.safe_dump(document(), sort_keys=False, allow_unicode=True, width=100)
)
