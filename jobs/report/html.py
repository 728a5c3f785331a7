"""HTML pieces of ``jobs.report``: the page shell (CSS, pagination script), legend, tables, SVG histograms.

Static and self-contained: no server, no network, no JavaScript library. Without JavaScript every gallery
page is shown one after another; with it, one page at a time with page buttons (``#page-N`` links work).
When every image has settled, the page records on ``<body>`` how many images loaded
(``data-images-total``, ``data-images-loaded``, ``data-images-broken``), which the test reads.
"""

from __future__ import annotations

import html
import json

CSS = """
:root { --fg: #1d2430; --muted: #5b6575; --line: #d9dee7; --bg: #f6f7f9; --card: #fff; --accent: #2f5fd0; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); }
header { padding: 18px 28px 10px; background: var(--card); border-bottom: 1px solid var(--line); }
header h1 { margin: 0 0 4px; font-size: 20px; }
header .facts { color: var(--muted); }
header .facts b { color: var(--fg); font-weight: 600; }
nav.top { display: flex; gap: 18px; padding: 8px 28px; background: var(--card); border-bottom: 1px solid var(--line);
          position: sticky; top: 0; z-index: 2; }
nav.top a { color: var(--accent); text-decoration: none; font-weight: 600; }
main { padding: 8px 28px 40px; }
section { margin: 22px 0; }
h2 { font-size: 17px; margin: 0 0 10px; }
h3 { font-size: 15px; margin: 16px 0 8px; }
.note { color: var(--muted); margin: 4px 0 10px; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 14px; }
.chip { display: inline-flex; align-items: center; gap: 5px; white-space: nowrap; }
.sw { display: inline-block; width: 13px; height: 13px; border-radius: 3px; border: 1px solid rgba(0,0,0,.25); }
.cards { display: flex; flex-wrap: wrap; gap: 14px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px; max-width: 100%; }
.card .uri { font-size: 12px; color: var(--muted); overflow-wrap: anywhere; max-width: 560px; margin-bottom: 6px; }
.card .methods { display: flex; gap: 10px; flex-wrap: wrap; }
figure { margin: 0; }
figure img { display: block; border-radius: 4px; image-rendering: auto; background: #000; }
figcaption { font-size: 12px; margin-top: 4px; max-width: 280px; }
figcaption .m { font-weight: 600; }
figcaption .chip { font-size: 11px; margin-right: 6px; }
.pager { display: flex; flex-wrap: wrap; gap: 6px; margin: 10px 0; align-items: center; }
.pager button { border: 1px solid var(--line); background: var(--card); border-radius: 5px; padding: 3px 9px;
                cursor: pointer; font: inherit; }
.pager button.on { background: var(--accent); color: #fff; border-color: var(--accent); }
.page > h3 { display: block; }
html.js .page { display: none; }
html.js .page.on { display: block; }
html.js .page > h3 { display: none; }
html:not(.js) .pager { display: none; }
table { border-collapse: collapse; background: var(--card); border: 1px solid var(--line); }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: middle; }
th { background: #eef1f5; font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.bar { height: 9px; background: var(--accent); border-radius: 2px; min-width: 1px; }
td.msg { max-width: 640px; overflow-wrap: anywhere; font-family: ui-monospace, monospace; font-size: 12px; }
pre { background: var(--card); border: 1px solid var(--line); padding: 12px; overflow: auto; max-height: 520px;
      font-size: 12px; }
svg.hist rect { fill: var(--accent); }
svg.hist text { font-size: 8px; fill: var(--muted); }
"""

SCRIPT = """
(function () {
  var pages = Array.prototype.slice.call(document.querySelectorAll('.page'));
  var pager = document.querySelector('.pager');
  function show(i) {
    pages.forEach(function (p, j) { p.classList.toggle('on', j === i); });
    if (pager) pager.querySelectorAll('button[data-page]').forEach(function (b) {
      b.classList.toggle('on', Number(b.dataset.page) === i);
    });
  }
  function fromHash() {
    var m = /^#page-(\\d+)$/.exec(location.hash);
    var i = m ? Number(m[1]) - 1 : 0;
    return i >= 0 && i < pages.length ? i : 0;
  }
  if (pages.length) {
    document.documentElement.classList.add('js');
    var current = fromHash();
    if (pager) pager.addEventListener('click', function (e) {
      var b = e.target.closest('button');
      if (!b) return;
      if (b.dataset.page !== undefined) current = Number(b.dataset.page);
      else current = Math.max(0, Math.min(pages.length - 1, current + Number(b.dataset.step)));
      history.replaceState(null, '', '#page-' + (current + 1));
      show(current);
    });
    window.addEventListener('hashchange', function () { current = fromHash(); show(current); });
    show(current);
  }
  function settle() {
    var imgs = Array.prototype.slice.call(document.images);
    var pending = imgs.filter(function (im) { return !im.complete; });
    if (pending.length) { setTimeout(settle, 50); return; }
    var ok = imgs.filter(function (im) { return im.naturalWidth > 0; }).length;
    document.body.dataset.imagesTotal = imgs.length;
    document.body.dataset.imagesLoaded = ok;
    document.body.dataset.imagesBroken = imgs.length - ok;
  }
  if (document.readyState === 'complete') settle(); else window.addEventListener('load', settle);
})();
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def rgb_hex(colour) -> str:
    r, g, b = (int(c) for c in colour[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def chip(name: str, colour) -> str:
    return (
        f'<span class="chip"><span class="sw" style="background:{rgb_hex(colour)}"></span>{esc(name)}</span>'
    )


def legend(names: list[str], colours) -> str:
    """Colour legend: background (label 0) then every vocabulary class in label order."""
    items = [chip("background", colours[0])] + [chip(f"{k} {n}", colours[k]) for k, n in enumerate(names, 1)]
    return '<div class="legend">' + "".join(items) + "</div>"


def figure(src: str, width: int, height: int, method: str, classes_html: str, alt: str) -> str:
    return (
        f'<figure><img src="{src}" width="{width}" height="{height}" alt="{esc(alt)}">'
        f'<figcaption><span class="m">{esc(method)}</span> {classes_html}</figcaption></figure>'
    )


def card(uri: str, size_note: str, figures: list[str]) -> str:
    return (
        f'<div class="card"><div class="uri" title="{esc(uri)}">{esc(uri)} <span>{esc(size_note)}</span></div>'
        f'<div class="methods">{"".join(figures)}</div></div>'
    )


def gallery(cards: list[str], per_page: int) -> str:
    """Cards split into pages of ``per_page``, with a pager (hidden without JavaScript)."""
    if not cards:
        return '<p class="note">No segmented image to show.</p>'
    pages = [cards[i : i + per_page] for i in range(0, len(cards), per_page)]
    buttons = "".join(f'<button type="button" data-page="{i}">{i + 1}</button>' for i in range(len(pages)))
    pager = (
        f'<div class="pager"><button type="button" data-step="-1">&larr; prev</button>{buttons}'
        f'<button type="button" data-step="1">next &rarr;</button></div>'
    )
    body = "".join(
        f'<div class="page" id="page-{i + 1}"><h3>Page {i + 1} of {len(pages)}</h3>'
        f'<div class="cards">{"".join(p)}</div></div>'
        for i, p in enumerate(pages)
    )
    return (pager if len(pages) > 1 else "") + body


def histogram_svg(counts: list[int], labels: tuple[str, ...], width: int = 16, height: int = 34) -> str:
    """Inline SVG bar chart of ``counts`` (one bar per area bin); each bar has a tooltip."""
    top = max(counts) or 1
    bars = []
    for i, (count, label) in enumerate(zip(counts, labels)):
        h = 0 if count == 0 else max(1.0, (height - 2) * count / top)
        bars.append(
            f'<rect x="{i * width + 1}" y="{height - h:.1f}" width="{width - 2}" height="{h:.1f}">'
            f"<title>{esc(label)}: {count}</title></rect>"
        )
    total_w = width * len(counts)
    axis = f'<line x1="0" y1="{height}" x2="{total_w}" y2="{height}" stroke="#9aa3b2" stroke-width="1"/>'
    return (
        f'<svg class="hist" width="{total_w}" height="{height + 1}" viewBox="0 0 {total_w} {height + 1}" '
        f'role="img" aria-label="area histogram">{"".join(bars)}{axis}</svg>'
    )


def table(
    header: list[str], rows: list[list[str]], numeric: set[int] = frozenset(), wide: set[int] = frozenset()
) -> str:
    """An HTML table; cells are raw HTML (escape before). Columns in ``numeric`` are right-aligned,
    those in ``wide`` hold long text (error messages) that wraps anywhere."""

    def cell(i, c):
        cls = "n" if i in numeric else "msg" if i in wide else ""
        return f'<td class="{cls}">{c}</td>' if cls else f"<td>{c}</td>"

    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def bar(value: float, top: float, width: int = 120) -> str:
    share = 0 if top <= 0 else value / top
    return f'<div class="bar" style="width:{max(1, round(share * width))}px" title="{value:g}"></div>'


def manifest_block(manifest: dict) -> str:
    return "<pre>" + esc(json.dumps(manifest, indent=2, sort_keys=False, default=str)) + "</pre>"


def page(title: str, facts_html: str, sections: list[tuple[str, str, str]], total_images: int) -> str:
    """The whole document. sections: (anchor id, heading, inner HTML)."""
    nav = "".join(f'<a href="#{sid}">{esc(heading)}</a>' for sid, heading, _ in sections)
    body = "".join(
        f'<section id="{sid}"><h2>{esc(heading)}</h2>{inner}</section>' for sid, heading, inner in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        f'<body data-images-expected="{total_images}"><header><h1>{esc(title)}</h1>'
        f'<div class="facts">{facts_html}</div></header><nav class="top">{nav}</nav><main>{body}</main>'
        f"<script>{SCRIPT}</script></body></html>\n"
    )
