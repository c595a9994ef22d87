"""The report's HTML: one small shell per page, its data embedded as one JSON blob.

Every page is the same shell: a Content-Security-Policy that allows only the site's own script
files (no inline script, no network), the page's data as `<script type="application/json">` with
`<`, `>` and `&` written as JSON escapes (so no text from a run folder can close the element; a
run's JSONL metric files go in the same way, as text its script parses line by line), and
`static/report.js`, which renders everything with DOM text nodes, never as markup. The only text
placed in markup directly is the title, HTML-escaped.
"""
from __future__ import annotations

import html
import json
import math
from typing import Any, Optional

# `file:` lets the page's own scripts load when it is opened from disk (Chromium gives file pages an
# opaque origin that 'self' does not match); 'self' covers a web server.
CSP = ("default-src 'none'; script-src 'self' file:; style-src 'self' file: 'unsafe-inline'; "
       "img-src 'self' file: data:; base-uri 'none'; form-action 'none'")



_LT = "\\u003c"


def escape_block(text: str) -> str:
    """Text safe inside a <script> element: `<`, `>` and `&` as JSON escapes (valid in JSON strings,
    and never found outside them in valid JSON), so nothing can close the element."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _finite(obj: Any) -> Any:
    """NaN and infinities as strings (JSON has no such numbers); everything else unchanged."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def embed(data: Any) -> str:
    """`data` as JSON safe inside a <script type="application/json"> element."""
    try:
        text = json.dumps(data, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:  # a NaN or inf somewhere: the slow, cleaning path
        text = json.dumps(_finite(data), separators=(",", ":"), allow_nan=False, default=str)
    return escape_block(text)


def page(title: str, kind: str, data: Any, depth: int, texts: Optional[dict[str, str]] = None) -> str:
    """A whole page: `kind` picks the renderer in report.js; `depth` is how deep below the site root;
    `texts` are extra raw blocks (a run's JSONL metric files) the script reads as `orch-<name>`."""
    up = "../" * depth
    # only "<" can end a script element ("</script", "<!--"): the long metric texts need no more
    blocks = "".join(f"<script type=\"text/plain\" id=\"orch-{name}\">{text.replace('<', _LT)}</script>"
                     for name, text in (texts or {}).items())
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
        "<meta name=\"referrer\" content=\"no-referrer\">"
        f"<title>{html.escape(title)}</title>"
        f"<link rel=\"stylesheet\" href=\"{up}static/uPlot.min.css\">"
        f"<link rel=\"stylesheet\" href=\"{up}static/report.css\"></head>"
        f"<body data-page=\"{kind}\" data-root=\"{up}\">"
        "<noscript><p>This report is drawn by JavaScript in the page itself (nothing is fetched); "
        "enable scripts for file pages to see it.</p></noscript><div id=\"app\"></div>"
        f"<script type=\"application/json\" id=\"orch-data\">{embed(data)}</script>{blocks}"
        f"<script src=\"{up}static/uPlot.iife.min.js\"></script>"
        f"<script src=\"{up}static/report.js\"></script>"
        "</body></html>\n"
    )
