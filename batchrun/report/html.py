"""The report as one self-contained HTML file (#26): a placeholder that prints the document's
summary as a table; the real one draws the series as inline SVG."""

from __future__ import annotations

import html
from typing import Any


def render(doc: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in doc.get("summary", {}).items())
    title = html.escape(str(doc.get("job", {}).get("output", "batchrun report")))
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>"
            f"<body><h1>{title}</h1><table>{rows}</table></body></html>\n")
