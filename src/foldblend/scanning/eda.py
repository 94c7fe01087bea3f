"""One offline HTML page that says what is in the data before a GPU-hour is spent on it.

Everything is inline (charts and thumbnails as base64 PNG/JPEG), so `folds/eda.html` opens from a
laptop, an archive or a Kaggle notebook output without any of the input images or a network.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from foldblend.artifacts import write_text
from foldblend.data.ood import ood_report
from foldblend.data.read import ImageReadError, load_rgb
from foldblend.data.semantic import groups_added
from foldblend.scanning.shift_files import describe_shift

THUMB = 72            # thumbnail side in pixels
MAX_DUP_GROUPS = 30   # groups shown with thumbnails (the count above says how many there are)

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
h2{border-bottom:1px solid #ccc;padding-bottom:.2em}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}.grp{margin:6px 0;padding:4px;background:#f6f6f6}
figure{display:inline-block;margin:3px;text-align:center;font-size:11px;max-width:110px;word-break:break-all}
.warn{color:#a00}"""


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return f'<img alt="chart" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _bar(counts: pd.Series, title: str, xlabel: str = "") -> str:
    fig = Figure(figsize=(min(14, 2 + 0.35 * len(counts)), 3.2))
    ax = fig.subplots()
    ax.bar([str(k) for k in counts.index], counts.to_numpy())
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.tick_params(axis="x", labelrotation=90 if len(counts) > 8 else 0)
    return _png(fig)


def _hist(values: dict[str, np.ndarray], title: str) -> str:
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    for name, v in values.items():
        ax.hist(v, bins=30, alpha=0.6, label=name)
    ax.set_title(title)
    ax.legend()
    return _png(fig)


def _thumb(root: Path, image: str, caption: str) -> str:
    try:
        rgb = load_rgb(Path(root) / image, draft_size=THUMB, root=root)
        h, w = rgb.shape[:2]
        s = THUMB / max(h, w)
        small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
        img = f'<img alt="" src="data:image/jpeg;base64,{base64.b64encode(jpg.tobytes()).decode()}">'
    except (ImageReadError, cv2.error):
        img = '<div class="warn">unreadable</div>'
    return f"<figure>{img}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, escape=True, border=0)


def _class_section(labels: pd.Series | None) -> list[str]:
    out = ["<h2 id='classes'>Class balance</h2>"]
    lab = None if labels is None else pd.Series(labels).dropna()
    if lab is None or lab.empty:
        return out + ["<p>No labels given.</p>"]
    counts = lab.astype(str).value_counts()
    ratio = counts.max() / counts.min()
    out.append(f"<p>{len(counts)} classes, {len(lab)} labelled images. Imbalance ratio (largest / smallest class): "
               f"<b>{ratio:.1f}</b>" + (" <span class='warn'>- consider class weights or stratified sampling</span>"
                                         if ratio >= 5 else "") + "</p>")
    out.append(_bar(counts, "images per class"))
    out.append(_table(counts.rename_axis("class").reset_index(name="images")))
    return out


def _sizes_section(scan_df: pd.DataFrame) -> list[str]:
    good = scan_df[scan_df["ok"].astype(bool)]
    out = ["<h2 id='sizes'>Sizes, formats, modes</h2>"]
    if good.empty:
        return out + ["<p>No readable images.</p>"]
    out.append(_hist({"width": good["width"].to_numpy(), "height": good["height"].to_numpy()}, "image size (px)"))
    out.append(_hist({"aspect w/h": (good["width"] / good["height"]).to_numpy()}, "aspect ratio"))
    out.append(_bar(good["format"].value_counts(), "file format"))
    out.append(_bar(good["mode"].value_counts(), "colour mode (as stored)"))
    return out


def _bad_section(scan_df: pd.DataFrame) -> list[str]:
    bad = scan_df[~scan_df["ok"].astype(bool)]
    out = [f"<h2 id='unreadable'>Unreadable files ({len(bad)})</h2>"]
    if bad.empty:
        return out + ["<p>None.</p>"]
    return out + ["<p>Left out of training; test ids among them still get a prediction.</p>",
                  _table(bad[["image", "why", "bytes"]])]


def _dup_section(scan_df, groups, labels, root) -> list[str]:
    out = ["<h2 id='duplicates'>Duplicate groups</h2>"]
    if groups is None:
        return out + ["<p>Not computed.</p>"]
    groups = np.asarray(groups)
    sizes = pd.Series(groups).map(pd.Series(groups).value_counts()).to_numpy()
    multi = pd.unique(groups[sizes > 1])
    lab = None if labels is None else pd.Series(labels).reset_index(drop=True)
    out.append(f"<p>{len(multi)} groups with more than one image ({int((sizes > 1).sum())} images). Each group "
               "shares one fold, so copies never score each other.</p>")
    for g in multi[:MAX_DUP_GROUPS]:
        rows = np.flatnonzero(groups == g)
        tags = [] if lab is None else [str(lab.iloc[r]) for r in rows]
        conflict = lab is not None and len({t for t in tags if t not in ("nan", "None")}) > 1
        figs = "".join(_thumb(root, scan_df["image"].iloc[r],
                              scan_df["image"].iloc[r] + (f" [{tags[k]}]" if tags else ""))
                       for k, r in enumerate(rows[:8]))
        note = " <span class='warn'>labels disagree</span>" if conflict else ""
        out.append(f"<div class='grp'>group {int(g)}: {len(rows)} images{note}<br>{figs}</div>")
    return out


def _ood_section(scan_df, ood_scores, root, top: int = 20) -> list[str]:
    out = ["<h2 id='ood'>Out-of-domain suspects</h2>"]
    if ood_scores is None:
        return out + ["<p>Not computed.</p>"]
    rep = ood_report(scan_df, np.asarray(ood_scores, dtype=np.float64), top=top)
    out.append("<p>Most unusual images by simple statistics (IsolationForest); look, then decide.</p>")
    out.append("".join(_thumb(root, r.image, f"#{r.rank} {r.image} ({r.score:.3f})") for r in rep.itertuples()))
    return out


MAX_FLAGGED = 300     # thumbnails of out-of-domain images above the threshold (the rest are listed by name)


def _flagged_section(scan_df, ood_scores, flagged: dict | None, root) -> list[str]:
    """Every train image above the out-of-domain threshold: what `ood: drop` leaves out of the folds."""
    if flagged is None:
        return []
    mask = np.asarray(flagged["mask"], bool)
    drop = flagged["mode"] == "drop"
    out = [f"<h2 id='ood-dropped'>{'Dropped' if drop else 'Would be dropped'} "
           f"as out-of-domain ({int(mask.sum())})</h2>",
           f"<p>Threshold {flagged['threshold']:.3f} ({html.escape(flagged['how'])}). "
           + ("These images are left out of the folds (<code>ood: drop</code>); folds/folds.json lists them."
              if drop else "Kept: <code>ood: report</code>. Set <code>ood: drop</code> in competition.yaml to "
              "leave them out.") + "</p>"]
    rows = np.flatnonzero(mask)
    rows = rows[np.argsort(-np.asarray(ood_scores)[rows], kind="stable")]
    out.append("".join(_thumb(root, scan_df["image"].iloc[r], f"{scan_df['image'].iloc[r]} ({ood_scores[r]:.3f})")
                       for r in rows[:MAX_FLAGGED]))
    if len(rows) > MAX_FLAGGED:
        out.append("<p>and " + html.escape(", ".join(scan_df["image"].iloc[rows[MAX_FLAGGED:]])) + "</p>")
    return out


def similarity_png(distributions: dict[str, np.ndarray], title: str = "", dpi: int = 90) -> bytes:
    """Histograms (as densities) of nearest-neighbour similarities, one per population, as PNG bytes."""
    fig = Figure(figsize=(7, 3.4))
    ax = fig.subplots()
    finite = [np.asarray(v, np.float64)[np.isfinite(v)] for v in distributions.values()]
    values = np.concatenate(finite) if finite else np.zeros(0)
    lo, hi = (np.percentile(values, 0.5), values.max()) if len(values) else (0.0, 1.0)
    bins = np.linspace(lo, hi + 1e-6, 40)
    for (name, _), v in zip(distributions.items(), finite):
        if len(v):
            ax.hist(v, bins=bins, density=True, histtype="stepfilled", alpha=0.35,
                    label=f"{name} (median {np.median(v):.3f})")
            ax.hist(v, bins=bins, density=True, histtype="step", linewidth=1.2)
    ax.set_xlabel("cosine similarity to the nearest training image")
    ax.set_ylabel("density")
    ax.set_title(title or "how close each image is to what its model trained on")
    ax.legend(fontsize=8, loc="upper left")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _shift_section(shift: dict | None) -> list[str]:
    out = ["<h2 id='shift'>Train and test: can CV be trusted?</h2>"]
    if shift is None:
        return out + ["<p>Not computed (<code>embeddings: false</code> in competition.yaml, or too few images).</p>"]

    result, arrays = shift["result"], shift["arrays"]
    lines = describe_shift(result, shift["mode"])
    out += [f"<p{' class=warn' if line.startswith('WARNING') else ''}>{html.escape(line)}</p>" for line in lines]
    if result.get("n_test"):
        dists = {"OOF image -> nearest in other folds (pHash groups)": arrays["oof_similarity"],
                 "test image -> nearest train image": arrays["test_similarity"]}
        if "matched_similarity" in arrays and (result.get("match") or {}).get("threshold") is not None:
            dists["OOF, folds with semantic groups"] = arrays["matched_similarity"]
        png = similarity_png(dists)
        out.append(f'<img alt="similarity distributions" src="data:image/png;base64,{base64.b64encode(png).decode()}">')
        out.append("<p>When the OOF curve sits right of the test curve, every OOF image had a closer relative in "
                   "training than test images will have, and CV scores easier cases than the leaderboard.</p>")
    return out


def _semantic_section(shift: dict | None, root: Path) -> list[str]:
    out = ["<h2 id='semantic'>Semantic groups (beyond pHash)</h2>"]
    semantic = (shift or {}).get("result", {}).get("semantic") if shift else None
    if not semantic or "semantic_groups" not in shift["arrays"]:
        return out + ["<p>None: no threshold was chosen (no sign that CV is optimistic, no test set to match, or "
                      "<code>semantic_threshold</code> unset).</p>"]

    arrays = shift["arrays"]
    images = np.asarray(shift["train_images"], dtype=object)[arrays["rows"]]
    groups, phash = np.asarray(arrays["semantic_groups"]), np.asarray(arrays["phash_groups"])
    added = groups_added(phash, groups)["groups"]
    sizes = np.bincount(groups)
    out.append(f"<p>{len(added)} groups join images pHash does not (threshold {semantic['threshold']:.4f}, "
               f"{html.escape(semantic['how'])}; "
               f"{'used by the folds' if semantic['applied'] else 'not used by the folds'}"
               f"). The largest first, up to {MAX_DUP_GROUPS}; each keeps its images in one fold.</p>")
    for g in added[np.argsort(-sizes[added], kind="stable")][:MAX_DUP_GROUPS]:
        rows = np.flatnonzero(groups == g)
        figs = "".join(_thumb(root, images[r], images[r]) for r in rows[:8])
        out.append(f"<div class='grp'>group of {len(rows)} images, "
                   f"{len(np.unique(phash[rows]))} pHash groups<br>{figs}</div>")
    return out


def write_eda(scan_df: pd.DataFrame, groups: np.ndarray | None, ood_scores: np.ndarray | None,
              labels: pd.Series | None, out_path: Path, root: Path, ood_flagged: dict | None = None,
              shift: dict | None = None) -> Path:
    """Write the EDA page atomically; `labels` is positional (one per scan row, NaN for test rows).

    `ood_flagged`: {mask, threshold, how, mode} of the images above the out-of-domain threshold;
    `shift`: {result, arrays, mode, train_images} of the shift check (`shift_stage.run_shift_check`)."""
    with matplotlib.rc_context({"text.parse_math": False}):  # class names are data: `$x$` is not mathtext
        page = _page(scan_df, groups, ood_scores, labels, root, ood_flagged, shift)
    write_text(out_path, page)
    return Path(out_path)


def _page(scan_df, groups, ood_scores, labels, root, ood_flagged, shift) -> str:
    n, n_ok = len(scan_df), int(scan_df["ok"].astype(bool).sum())
    body = [f"<h1>Data report</h1><p>{n} files scanned, {n_ok} readable, {n - n_ok} unreadable.</p>",
            "<p><a href='#classes'>classes</a> · <a href='#sizes'>sizes</a> · <a href='#unreadable'>unreadable</a>"
            " · <a href='#duplicates'>duplicates</a> · <a href='#ood'>out-of-domain</a>"
            + (" · <a href='#ood-dropped'>dropped</a>" if ood_flagged is not None else "")
            + " · <a href='#shift'>train/test shift</a> · <a href='#semantic'>semantic groups</a></p>"]
    body += _class_section(labels) + _sizes_section(scan_df) + _bad_section(scan_df)
    body += _dup_section(scan_df, groups, labels, root) + _ood_section(scan_df, ood_scores, root)
    body += _flagged_section(scan_df, ood_scores, ood_flagged, root)
    body += _shift_section(shift) + _semantic_section(shift, root)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>foldblend data report</title>"
            f"<style>{_CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n")
