"""What the self-contained pages (report.html, comparison.html) share: the skeleton, inline images, figures, tables."""
from __future__ import annotations

import base64
import html
from pathlib import Path

STYLE = """body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}
th{text-align:left;padding-right:1.5em}td,th{border-bottom:1px solid #ddd;padding:.3em .6em;vertical-align:top}
td.number{text-align:right}tr.best{background:#eef7ee;font-weight:bold}
img,canvas{image-rendering:pixelated}img{max-width:100%}figure{margin:0}figcaption{font-size:.9em;color:#555}
pre{background:#f5f5f5;padding:1em}nav a{margin-right:1em}.row{display:flex;flex-wrap:wrap;gap:2em;margin:1.5em 0}
.cards{display:flex;flex-wrap:wrap;gap:1em}.card{border:1px solid #ddd;border-radius:6px;padding:.8em;flex:1 1 240px}
.card b{font-size:1.3em;display:block}.card p{margin:.4em 0 0;font-size:.9em;color:#444}"""


def image(path: Path) -> str:
    """An inline <img> of a PNG; small pixel grids are shown at twice their size."""
    png = path.read_bytes()
    width = int.from_bytes(png[16:20], "big")  # from the IHDR chunk
    size = f' width="{2 * width}"' if width < 400 else ""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}"{size}>'


def figure(path: Path, caption: str) -> str:
    return f"<figure>{image(path)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def figure_rows(rows: list[list[tuple[Path, str]]]) -> str:
    """Rows of (PNG, caption) figures side by side; missing files are skipped, and empty rows."""
    shown = ["".join(figure(path, caption) for path, caption in row if path.is_file()) for row in rows]
    return "\n".join(f'<div class="row">{figures}</div>' for figures in shown if figures)


def table(head: list[str], rows: list[list[str]], marked: int | None = None, numbers_from: int = 0) -> str:
    """A <table> of escaped cells; row `marked` in bold, cells from column `numbers_from` on aligned right."""
    number, best = ' class="number"', ' class="best"'

    def cells(row: list[str]) -> str:
        return "".join(f"<td{number if i >= numbers_from else ''}>{html.escape(c)}</td>" for i, c in enumerate(row))
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(f"<tr{best if i == marked else ''}>{cells(row)}</tr>" for i, row in enumerate(rows))
    return f"<table><tr>{header}</tr>{body}</table>"


def page(title: str, body: str, style: str = "") -> str:
    """A whole self-contained HTML document."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}{style}</style>
</head><body>
<h1>{html.escape(title)}</h1>
{body}
</body></html>
"""
