"""Thumbnail strips of retrieved clips as one self-contained HTML page (images are base64 JPEG data URIs).

Usage:
    from clipvip.analysis.thumbnails import strip_data_uri, render_page
    uri = strip_data_uri(frame_index.uniform(clip_id, 4))          # uint8 [T,H,W,3] -> "data:image/jpeg;base64,..."
    html = render_page("Retrieval gallery", [{"query": "a red square moves right", "note": "gt: clip_7",
                       "columns": [{"label": "zero-shot", "hits": [{"clip_id", "score", "image", "gt"}]}]}])

Every ground-truth hit gets a green frame and a "GT" badge. The page's script counts images that decoded
(``naturalWidth > 0``) on load and writes ``data-images-loaded="<ok>/<total>"`` onto ``<body>``, so a headless
browser (``chromium --headless --dump-dom``) can check that every image of the page loads.
"""
from __future__ import annotations

import base64
import html
import io

import numpy as np

STYLE = """
body{font-family:system-ui,sans-serif;margin:1em;color:#222}
h1{font-size:1.3em} h2{font-size:1.05em;margin:1.2em 0 .3em} .note{color:#666;font-size:.85em}
.cols{display:flex;gap:1.5em;flex-wrap:wrap} .col{flex:1;min-width:320px}
.col h3{font-size:.95em;margin:.3em 0}
.hit{display:flex;align-items:center;gap:.5em;margin:.25em 0;padding:3px;border:3px solid transparent}
.hit.gt{border-color:#2ca02c;background:#eefbea} .hit img{display:block;height:auto;image-rendering:pixelated}
.rank{width:1.6em;text-align:right;color:#555} .meta{font-size:.8em;color:#444}
.badge{background:#2ca02c;color:#fff;border-radius:3px;padding:0 4px;font-size:.75em;margin-left:.3em}
"""

SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
});
"""


def strip_image(frames: np.ndarray, height: int = 64):
    """A PIL image: the frames side by side, each resized to ``height`` pixels (aspect kept)."""
    from PIL import Image

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 [T,H,W,3] frames, got shape {frames.shape}")
    _, h, w, _ = frames.shape
    width = max(1, round(w * height / h))
    tiles = [Image.fromarray(np.ascontiguousarray(f, dtype=np.uint8)).resize((width, height), Image.BILINEAR)
             for f in frames]
    strip = Image.new("RGB", (width * len(tiles) + 2 * (len(tiles) - 1), height), (255, 255, 255))
    for i, tile in enumerate(tiles):
        strip.paste(tile, (i * (width + 2), 0))
    return strip


def strip_data_uri(frames: np.ndarray, height: int = 64, quality: int = 85) -> str:
    buf = io.BytesIO()
    strip_image(frames, height).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _hit_html(rank: int, hit: dict) -> str:
    cls = "hit gt" if hit.get("gt") else "hit"
    badge = '<span class="badge">GT</span>' if hit.get("gt") else ""
    return (f'<div class="{cls}"><span class="rank">{rank}</span>'
            f'<img src="{hit["image"]}" alt="{html.escape(hit["clip_id"])}">'
            f'<span class="meta">{html.escape(hit["clip_id"])}{badge}<br>score {hit["score"]:.3f}</span></div>')


def render_page(title: str, sections: list[dict], intro: str = "") -> str:
    """The HTML of a page: per section a query and one column of ranked hits per model."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if intro:
        parts.append(f"<p class='note'>{html.escape(intro)}</p>")
    for section in sections:
        parts.append(f"<h2>“{html.escape(section['query'])}”</h2>")
        if section.get("note"):
            parts.append(f"<div class='note'>{html.escape(section['note'])}</div>")
        parts.append("<div class='cols'>")
        for column in section["columns"]:
            parts.append(f"<div class='col'><h3>{html.escape(column['label'])}</h3>")
            if column.get("note"):
                parts.append(f"<div class='note'>{html.escape(column['note'])}</div>")
            parts += [_hit_html(rank, hit) for rank, hit in enumerate(column["hits"], 1)]
            parts.append("</div>")
        parts.append("</div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
