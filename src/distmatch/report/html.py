"""One self-contained HTML report per run: inline CSS, images embedded as data URIs, no scripts or external assets.

A single file can be mailed, attached to an issue or opened from an artifact store without its run directory.
"""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np

from distmatch import __version__
from distmatch.checkpoint import atomic_write_bytes

_SECTION_KEYS = ("heading", "text", "table", "images", "pre")
_MIME = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       max-width: 1100px; margin: 2em auto; padding: 0 1.2em; color: #1d1d1f; line-height: 1.5; }
h1 { font-size: 1.7em; border-bottom: 2px solid #e3e3e8; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .92em; }
th, td { padding: .35em .8em; border-bottom: 1px solid #e3e3e8; text-align: left; }
th { background: #f0f0f4; font-weight: 600; }
tbody tr:nth-child(even) { background: #f8f8fb; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; display: block; margin: .8em 0; }
pre { background: #f6f6f9; border: 1px solid #e3e3e8; padding: .8em; overflow-x: auto; font-size: .85em; }
.missing { color: #b00020; font-style: italic; }
footer { margin-top: 3em; color: #888; font-size: .8em; }
"""


def metrics_table(rows: list[dict], columns: list[str]) -> dict:
    """The `table` structure of a section from metric dicts; a key a row lacks becomes None (shown as '–')."""
    return {"columns": list(columns), "rows": [[row.get(c) for c in columns] for row in rows]}


def _cell(value) -> tuple[str, bool]:
    """(escaped text, is_numeric) of one table cell; floats at 4 significant digits."""
    if value is None:
        return "–", False
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)), False
    if isinstance(value, (int, np.integer)):
        return str(int(value)), True
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return (f"{v:.4g}" if math.isfinite(v) else str(v)), True
    return html.escape(str(value)), False


def _table(table: dict) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table["columns"])
    body = []
    for row in table["rows"]:
        cells = [_cell(v) for v in row]
        body.append("<tr>" + "".join(f'<td class="num">{t}</td>' if num else f"<td>{t}</td>"
                                     for t, num in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _image(path) -> str:
    """An <img> with the file inlined; a missing or unknown file gets a visible note rather than failing the
    whole report (the other sections are still worth reading)."""
    p = Path(path)
    name = html.escape(p.name)
    if not p.is_file():
        return f'<p class="missing">image not found: {html.escape(str(p))}</p>'
    data = p.read_bytes()
    mime = next((m for magic, m in _MIME.items() if data.startswith(magic)), None)
    if mime is None:
        return f'<p class="missing">not a PNG or JPEG image: {html.escape(str(p))}</p>'
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img src="data:{mime};base64,{b64}" alt="{name}" title="{name}">'


def _paragraphs(text) -> str:
    """A string (blank lines separate paragraphs) or a list of strings, each an escaped <p>."""
    parts = [text] if isinstance(text, str) else list(text)
    paras = [q.strip() for part in parts for q in str(part).split("\n\n") if q.strip()]
    return "".join(f"<p>{html.escape(q)}</p>" for q in paras)


def _section(section: dict) -> str:
    unknown = set(section) - set(_SECTION_KEYS)
    if unknown:  # a typo such as "image" would otherwise silently drop content
        raise ValueError(f"unknown report section keys {sorted(unknown)}; allowed: {list(_SECTION_KEYS)}")
    out = [f"<section><h2>{html.escape(str(section.get('heading', '')))}</h2>"]
    for key, value in section.items():  # parts render in the order the caller wrote them
        if value is None or key == "heading":
            continue
        if key == "text":
            out.append(_paragraphs(value))
        elif key == "table":
            out.append(_table(value))
        elif key == "images":
            out.extend(_image(p) for p in ([value] if isinstance(value, (str, Path)) else value))
        elif key == "pre":
            out.append(f"<pre>{html.escape(str(value))}</pre>")
    out.append("</section>")
    return "\n".join(out)


def render_report(title: str, sections: list[dict]) -> str:
    """The report as an HTML string (no timestamp, so the same inputs give the same bytes)."""
    t = html.escape(str(title))
    body = "\n".join(_section(s) for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{t}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<h1>{t}</h1>\n{body}\n"
            f"<footer>generated by distmatch {__version__}</footer>\n</body>\n</html>\n")


def write_report(path, title: str, sections: list[dict]) -> Path:
    """Write the report atomically: a reader (or a crash mid-write) never sees a half-written file."""
    path = Path(path)
    text = render_report(title, sections)  # render first: a bad section raises before any file is touched
    atomic_write_bytes(path, text.encode("utf-8"))
    return path
