"""docs/config.md, generated from the keys' declarations: python -m vae.config.docs > docs/config.md"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any

from vae.config.schema import ROLE_TEXT, rule_text, sections


def _shown(value: Any) -> str:
    """A default as a YAML user writes it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return "—" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def markdown_table() -> str:
    """docs/config.md: every key with its default, the values it takes, its role and its meaning."""
    lines = ["# Config keys", "",
             "Generated from the fields of `vae/config/schema.py` by `python -m vae.config.docs > docs/config.md` "
             "(a test "
             "checks that the two agree). A config file sets only what differs from these defaults; an override "
             "`section.key=value` on the command line is parsed as YAML. *fixed*: a resumed run must keep the "
             "checkpoint's value (another value is a new experiment); *may change on resume*: a resumed or "
             "evaluated run may give another; *not compared*: `evaluate.py --compare` does not count a "
             "difference in it as a difference between runs.", "",
             "| key | default | takes | role | meaning |", "|---|---|---|---|---|"]
    for name, cls in sections().items():
        for f in dataclasses.fields(cls):
            takes = rule_text(f)
            for said in ("must be ", "must hold ", "one of ", "in "):
                takes = takes.removeprefix(said)
            if f.metadata["choices"]:
                takes = ", ".join(f"`{c}`" for c in f.metadata["choices"])
            elif f.type == "bool":
                takes = "`true`, `false`"
            elif not takes and f.type.startswith("str"):
                takes = "a path"
            cells = [f"`{name}.{f.name}`", f"`{_shown(f.default)}`", takes, ROLE_TEXT[f.metadata["role"]],
                     f.metadata["meaning"]]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
