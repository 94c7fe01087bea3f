"""The HTML of the web app's panels: results per image, and what the served model is.

Plain strings from the dictionaries `served.classify` returns (the same ones the HTTP API returns), so
the page shows exactly what a script receives. Thumbnails are inlined as data URIs: uploads are shown
without being copied anywhere. Every element a test or a script may look for has a `fb-` class and
`data-` attributes (`data-file`, `data-predicted`).
"""
from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from foldblend.data.read import ImageReadError, load_rgb
from foldblend.reporting.plots import data_uri, thumbnail_png
from foldblend.serve.model import ModelCard

THUMB = 112        # pixels, the longer side of an upload's thumbnail
SMALL_THUMB = 64   # similar training images
MAX_CARDS = 200    # result cards drawn; the JSON holds every image

CSS = """
.fb-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:12px}
.fb-card{border:1px solid var(--border-color-primary);border-radius:8px;padding:10px;display:flex;gap:10px;
 flex-wrap:wrap;background:var(--block-background-fill)}
.fb-card img.fb-thumb{width:112px;height:112px;object-fit:contain;image-rendering:pixelated;background:#fff;
 border:1px solid var(--border-color-primary)}
.fb-body{flex:1;min-width:150px}.fb-name{font-size:.85em;color:var(--body-text-color-subdued);overflow-wrap:anywhere}
.fb-predicted{font-size:1.15em;font-weight:600;margin:2px 0 6px}
.fb-topk{border-collapse:collapse;margin:0;border:none!important}
.fb-topk tr,.fb-topk td{padding:1px 4px!important;border:none!important;font-size:.9em}
.fb-topk td.fb-p{text-align:right;font-variant-numeric:tabular-nums}
.fb-bar{height:10px;background:var(--color-accent);border-radius:3px;min-width:1px}
.fb-barbox{width:64px;background:var(--border-color-primary);border-radius:3px}
.fb-card details{width:100%;font-size:.85em}.fb-card details table{width:auto;margin:4px 0}
.fb-card details td,.fb-card details th{padding:2px 8px!important}
.fb-errors{margin-bottom:10px}
.fb-error{color:#b42318;background:#fef3f2;border:1px solid #fecdca;border-radius:6px;padding:6px 10px;margin:4px 0}
.fb-similar{display:flex;gap:6px;flex-wrap:wrap;width:100%}.fb-similar figure{margin:0;font-size:.75em;width:64px}
.fb-similar img{width:64px;height:64px;object-fit:contain;image-rendering:pixelated;background:#fff}
.fb-card-table td,.fb-card-table th{padding:2px 8px;font-size:.9em}.fb-low{color:#b42318;font-weight:600}
"""


def esc(text) -> str:
    return html.escape(str(text))


def thumbnail_uri(path: Path, side: int) -> str:
    """A PNG data URI of the image at `side` pixels (longer side), or "" when it cannot be read."""

    try:
        return data_uri(thumbnail_png(load_rgb(path, draft_size=side), side))
    except (ImageReadError, ValueError):
        return ""


def _topk_rows(image: dict) -> str:
    rows = []
    for entry in image["top_k"]:
        width = max(1.0, 100 * entry["prob"])
        rows.append(f'<tr class="fb-class-row" data-class="{esc(entry["class"])}">'
                    f'<td class="fb-class">{esc(entry["class"])}</td>'
                    f'<td><div class="fb-barbox"><div class="fb-bar" style="width:{width:.1f}%"></div></div></td>'
                    f'<td class="fb-p">{entry["prob"]:.3f}</td></tr>')
    return '<table class="fb-topk">' + "".join(rows) + "</table>"


def _members_table(image: dict) -> str:
    if not image["members"]:
        return ""
    rows = "".join(f'<tr><td>{esc(m["member"])}</td><td>{m["weight"]:.3f}</td><td>{esc(m["predicted"])}</td>'
                   f'<td>{m["prob"]:.3f}</td><td>{m["prob_of_predicted"]:.3f}</td></tr>' for m in image["members"])
    return (f'<details class="fb-members"><summary>each member\'s view ({len(image["members"])})</summary>'
            f'<table><tr><th>member</th><th>weight</th><th>its top class</th><th>p</th>'
            f'<th>p({esc(image["predicted"])})</th></tr>{rows}</table></details>')


def _similar(image: dict, project) -> str:
    if "similar" not in image:
        return ""
    figures = []
    for n in image["similar"]:
        uri = thumbnail_uri(project.input / n["image"], SMALL_THUMB) if project is not None else ""
        figures.append(f'<figure title="{esc(n["image"])}">' + (f'<img src="{uri}" alt="">' if uri else "")
                       + f'<figcaption>{esc(n["label"])}<br>{n["similarity"]:.2f}</figcaption></figure>')
    return ('<div class="fb-similar"><b style="width:100%">most similar training images</b>' + "".join(figures)
            + "</div>")


def results_html(result: dict, paths_by_file: dict[str, Path], project=None) -> str:
    """Error lines first, then one card per classified image (thumbnail, top-k, members, similar)."""
    parts = []
    if result["errors"]:
        parts.append('<div class="fb-errors">' + "".join(f'<p class="fb-error">{esc(e)}</p>' for e in result["errors"])
                     + "</div>")
    images = result["images"]
    if images:
        extra = f" (the first {MAX_CARDS} shown; every one is in the JSON below)" if len(images) > MAX_CARDS else ""
        parts.append(f'<p class="fb-summary">{len(images)} image(s) classified by {esc(result["model"])}{extra}</p>')
    cards = []
    for image in images[:MAX_CARDS]:
        path = paths_by_file.get(image["file"])
        uri = thumbnail_uri(path, THUMB) if path is not None else ""
        top = image["top_k"][0]
        cards.append(f'<div class="fb-card" data-file="{esc(image["file"])}" '
                     f'data-predicted="{esc(image["predicted"])}">'
                     + (f'<img class="fb-thumb" src="{uri}" alt="{esc(image["file"])}">' if uri else "")
                     + f'<div class="fb-body"><div class="fb-name">{esc(image["file"])}</div>'
                     f'<div class="fb-predicted">{esc(image["predicted"])} <small>{top["prob"]:.3f}</small></div>'
                     + _topk_rows(image) + "</div>" + _members_table(image) + _similar(image, project) + "</div>")
    parts.append('<div class="fb-grid">' + "".join(cards) + "</div>")
    if not images and not result["errors"]:
        parts.append('<p class="fb-summary">Drop images, or a .zip of a folder of them, on the left.</p>')
    return '<div class="fb-results">' + "".join(parts) + "</div>"


def _table(df: pd.DataFrame, digits: int = 4) -> str:
    return df.to_html(index=False, border=0, na_rep="", classes="fb-card-table",
                      float_format=lambda v: f"{v:.{digits}f}")


def card_html(card: ModelCard, feature_name: str | None) -> str:
    """The served model: CV, members and weights, classes with per-class OOF scores, notes."""
    parts = [f'<p class="fb-headline"><b>{esc(card.headline)}</b>'
             + ("; per-class decision biases applied" if card.biases else "") + "</p>"]
    if card.scores:
        rows = [{"": label, **{k: v for k, v in s.items() if isinstance(v, (int, float))}}
                for label, s in card.scores.items()]
        parts.append(_table(pd.DataFrame(rows)))
    members = pd.DataFrame(card.members)
    if len(members) > 1 or card.scores:
        parts.append("<b>members</b>" + _table(members.rename(columns={"macro_f1": "OOF macro-F1"}), 3)
                     + ("<p>weight 0: part of the blend's search, not used to predict.</p>"
                        if "weight" in members and (members["weight"] == 0).any() else ""))
    per_class = card.per_class.copy()
    if "F1" in per_class:
        low = per_class["F1"].nsmallest(3).index if len(per_class) > 5 else []
        per_class["class"] = [f'<span class="fb-low">{esc(c)}</span>' if i in low else esc(c)
                              for i, c in zip(per_class.index, per_class["class"])]
        parts.append(f"<b>{len(per_class)} classes</b>, scored on {esc(card.scored_on)}"
                     + (" (the weakest three in red)" if len(low) else ""))
        parts.append(per_class.to_html(index=False, border=0, na_rep="", classes="fb-card-table", escape=False,
                                       float_format=lambda v: f"{v:.3f}"))
    else:
        parts.append(f"<b>{len(per_class)} classes</b>: " + esc(", ".join(map(str, per_class["class"]))))
    parts.append(f"<p>Most similar training images: by {esc(feature_name)} features.</p>" if feature_name else
                 "<p>No frozen-backbone features in this project, so no similar training images are shown.</p>")
    parts += [f'<p class="fb-error">note: {esc(n)}</p>' for n in card.notes]
    return '<div class="fb-card-info">' + "".join(parts) + "</div>"
