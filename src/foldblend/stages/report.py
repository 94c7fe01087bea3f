"""`foldblend report`: one self-contained HTML page (oof/report.html) of everything a run produced.

Every image is inlined as a base64 PNG, so the page opens offline and can be mailed as one file.
Each section reads its own artifacts and, when they are missing (no blend yet, no submissions), says
so instead of failing: the report can be written after any stage.
"""
from __future__ import annotations

import argparse
import html
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from foldblend.artifacts import read_json, write_text
from foldblend.data.read import ImageReadError, load_rgb
from foldblend.ensemble.confidence import describe_estimates, member_note
from foldblend.ensemble.selection import saved_lines
from foldblend.paths import Project
from foldblend.reporting.nearest_panel import neighbours_section
from foldblend.reporting.plots import (
    SCALE,
    confusion_png,
    data_uri,
    learning_curves_png,
    per_class_f1_png,
    png_size,
    thumbnail_png,
)
from foldblend.reporting.sources import best_member, oof_sources
from foldblend.safety import say_swept, sweep_temporaries
from foldblend.scanning.eda import similarity_png
from foldblend.scanning.shift_files import describe_shift, read_shift, similarity_npz
from foldblend.submission.log import SubmissionError, read_log

TOP_LOSSES = 24
SCORE_COLUMNS = ("macro_f1", "accuracy", "log_loss", "micro_f1", "weighted_f1")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1280px;
 padding:16px 28px;color:#1d2430;background:#fff;line-height:1.4}
h1{margin:8px 0 2px}h2{margin-top:36px;border-bottom:2px solid #dde3ea;padding-bottom:4px}
h3{margin:18px 0 6px;font-size:1.05em}
.meta{color:#5b6675;font-size:.9em}.missing{color:#8a5a00;background:#fff6e0;padding:8px 12px;border-radius:6px}
.warn{color:#9b1c1c}.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.88em;margin:4px 0 10px}
th,td{border:1px solid #dde3ea;padding:3px 9px;text-align:right;white-space:nowrap}
th{background:#f2f5f8}td:first-child,th:first-child{text-align:left}
img.plot{max-width:100%;height:auto;display:block;margin:6px 0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:12px}
figure{margin:0;border:1px solid #dde3ea;border-radius:6px;padding:6px;text-align:center;background:#fafbfc}
figure img{width:160px;height:160px;object-fit:contain;image-rendering:pixelated;background:#fff}
figcaption{font-size:.8em;margin-top:4px;overflow-wrap:anywhere;text-align:left}
figcaption .path{color:#5b6675;font-size:.9em}
.bad{color:#b42318;font-weight:600}.good{color:#166534;font-weight:600}
nav a{margin-right:14px}
"""


# ----------------------------------------------------------------------------- small HTML helpers

def esc(text) -> str:
    return html.escape(str(text))


def table(df: pd.DataFrame, digits: int = 4) -> str:
    """An HTML table, scrolled sideways inside its box (never widening the page) when too wide."""
    return '<div class="scroll">' + df.to_html(index=False, border=0, na_rep="",
                                               float_format=lambda v: f"{v:.{digits}f}") + "</div>"


def image(png: bytes, alt: str) -> str:
    """A plot at its layout size (the PNG holds SCALE x the pixels), shrunk only if the page is narrower."""
    width = png_size(png)[0] // SCALE
    return f'<img class="plot" alt="{esc(alt)}" width="{width}" src="{data_uri(png)}">'


def missing(text: str) -> str:
    return f'<p class="missing">{esc(text)}</p>'


# ----------------------------------------------------------------------------- what the run produced

def experiment_names(project: Project) -> list[str]:
    """Experiments with OOF scores or with epoch logs (a run still training shows its curves)."""
    names = {p.parent.name for p in project.oof.glob("*/scores.json")}
    names |= {p.parent.parent.name for p in project.models.glob("*/fold_*/log.csv")}
    return sorted(n for n in names if not n.startswith(("_", ".")))


def score_table(scores_by_row: dict, first: str) -> pd.DataFrame:
    rows = [{first: key, **{c: s[c] for c in SCORE_COLUMNS if s.get(c) is not None}}
            for key, s in scores_by_row.items()]
    return pd.DataFrame(rows)


def experiment_section(project: Project, exp: str) -> str:
    parts = [f"<h3>{esc(exp)}</h3>"]
    scores = read_json(project.oof_dir(exp) / "scores.json")
    if scores is None:
        parts.append(missing(f"no oof/{exp}/scores.json yet (training unfinished)"))
    else:
        overall = scores.get("overall", {})
        per_fold = {f"fold {k}": v for k, v in sorted(scores.get("per_fold", {}).items(), key=lambda kv: int(kv[0]))}
        parts.append(f'<p class="meta">model {esc(scores.get("model", "?"))}; '
                     f'{scores.get("n_images", "?")} OOF images; views {esc(", ".join(scores.get("views", [])))}</p>')
        parts.append("<div style='display:flex;gap:28px;flex-wrap:wrap'><div><b>CV per fold</b>"
                     + table(score_table({**per_fold, "overall": overall}, "fold"))
                     + "</div><div><b>CV per TTA view</b>"
                     + table(score_table(scores.get("per_view", {}), "view")) + "</div></div>")
    logs = {int(p.parent.name.split("_")[1]): pd.read_csv(p)
            for p in sorted(project.models.glob(f"{exp}/fold_*/log.csv"))}
    config = (scores or {}).get("config") or {}
    if logs:
        parts.append(image(learning_curves_png(logs), f"{exp} learning curves"))
    elif config.get("kind") == "embedding":  # a head fitted once per fold: no epochs to plot
        parts.append(f'<p class="meta">embedding member: a {esc((config.get("embed") or {}).get("head", "?"))} '
                     f'head per fold on frozen {esc(config.get("model", "?"))} features '
                     f'({esc(config.get("pretrained"))}, {config.get("img_size", "?")} px)</p>')
    else:
        parts.append(missing(f"no epoch logs under models/{exp}/"))
    return "\n".join(parts)


def blend_section(blend: dict | None) -> str:
    if blend is None:
        return missing("no blend yet (oof/_blend/blend.json): run `foldblend blend`")
    weights, member_scores = blend.get("weights") or {}, blend.get("member_scores") or {}
    members = list(blend.get("members") or weights)
    rows = [{"member": m, "weight": weights.get(m), **{c: v for c, v in (member_scores.get(m) or {}).items()
                                                        if c in SCORE_COLUMNS[:3] and v is not None}}
            for m in members]
    held = blend.get("holdout") or {}
    alone = blend.get("member_confidence") or {}
    for row in rows:
        if row["member"] in (held.get("members") or {}):
            row["holdout macro_f1"] = held["members"][row["member"]]["macro_f1"]
        if row["member"] in alone:
            row["confidence estimate"] = alone[row["member"]]["macro_f1"]
    cv = {"in-sample": blend.get("cv_in_sample") or {}, "nested (honest)": blend.get("cv_nested") or {}}
    if held:
        cv[f"holdout ({held['n_images']} images, never fitted on)"] = held["blend"]
    headline = (f"CV {blend['cv_nested']['macro_f1']:.4f}, holdout {held['blend']['macro_f1']:.4f} (macro-F1)"
                if held and blend.get("cv_nested") else "")
    estimates = describe_estimates(blend.get("test_matched"), blend.get("confidence"))
    if estimates and blend.get("cv_nested"):
        headline = (f"nested CV {blend['cv_nested']['macro_f1']:.4f} · {estimates}"
                    + (f"; {headline}" if headline else ""))
    parts = [f'<p class="meta">method <b>{esc(blend.get("method", "?"))}</b>'
             + ("; per-class decision biases applied" if blend.get("biases") is not None else "")
             + (f"; <b>{esc(headline)}</b>" if headline else "") + "</p>",
             "<div style='display:flex;gap:28px;flex-wrap:wrap'><div><b>members</b>" + table(pd.DataFrame(rows))
             + "</div><div><b>blend CV</b>" + table(score_table(cv, "CV")) + "</div></div>"]
    parts += [f'<p class="warn">warning: {esc(w)}</p>' for w in blend.get("warnings") or []]
    selection = blend.get("selection")
    if selection:
        lines = saved_lines(blend)
        parts.append(f"<p><b>{esc(lines[0])}</b></p>")
        parts += [f'<p class="warn">{esc(line)}</p>' for line in lines[1:]]
        cands = pd.DataFrame([{"candidate": ("written: " if n == selection["chosen"] else "") + n, "CV": c["cv"],
                               **{f"{e} estimate": v["macro_f1"] for e, v in c["estimates"].items()},
                               "fold average gain": c["gain"]} for n, c in selection["candidates"].items()])
        parts.append("<b>candidates, each estimated on the test without labels</b>" + table(cands))
    else:
        note = member_note(blend.get("confidence"), alone)
        if note:
            parts.append(f'<p class="warn">{esc(note)}</p>')
    return "\n".join(parts)


def trust_section(project: Project, blend: dict | None) -> str:
    """The scan's shift verdict, the similarity distributions of the split in use, the test-matched CV."""

    shift = read_shift(project)
    if shift is None:
        return missing("no shift check (folds/shift.json): `embeddings: false`, too few images, or no scan yet")
    parts = [f'<p class="{"warn" if line.startswith("WARNING") else "meta"}">{esc(line)}</p>'
             for line in describe_shift(shift, shift.get("dedup", "auto"))]
    path = similarity_npz(project)
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            oof, test = z["oof_similarity"], z["test_similarity"]
        if len(test):
            parts.append(image(similarity_png({"OOF image -> nearest in other folds (the folds in use)": oof,
                                               "test image -> nearest train image": test}, dpi=100 * SCALE),
                               "similarity distributions"))
    matched, confidence = (blend or {}).get("test_matched"), (blend or {}).get("confidence")
    if (matched or confidence) and blend.get("cv_nested"):
        how = ([f"test-matched: OOF rows weighted by similarity bin to the test's distribution, effective sample "
                f"{matched['ess']:.0f} of {matched['n_rows']} rows"] if matched else []) + (
            ["confidence estimate: each fold's pipeline on the test, counted right above the confidence that splits "
             "its OOF rows as they were right (ATC); it describes one fold model, and the submission averages them"]
            if confidence else [])
        parts.append(f"<p><b>nested CV {blend['cv_nested']['macro_f1']:.4f} · "
                     f"{esc(describe_estimates(matched, confidence))}</b> ({esc('; '.join(how))}; ± is a bootstrap "
                     f"over groups and test images)</p>")
    return "\n".join(parts)


def per_class_section(sources: dict[str, dict]) -> str:
    if not sources:
        return missing("no finished experiment in oof/ yet")
    classes = next(iter(sources.values()))["classes"]
    f1 = {name: f1_score(s["labels"], s["probs"].argmax(1), labels=list(range(len(classes))), average=None,
                         zero_division=0) for name, s in sources.items() if s["classes"] == classes}
    note = "" if "blend" in sources else missing("no blend yet: only the best member is shown")
    return note + image(per_class_f1_png(f1, classes), "per-class F1")


def confusion_section(name: str, source: dict) -> str:
    pred = source["probs"].argmax(1)
    return (f'<p class="meta">{esc(name)} on its out-of-fold predictions; rows are true classes, normalised '
            f"(the diagonal is each class's recall; cells show percent)</p>"
            + image(confusion_png(source["labels"], pred, source["classes"], title=f"{name} (OOF)"),
                    "confusion matrix"))


def thumbnail(path: Path, root: Path | None = None) -> str:
    try:
        png = thumbnail_png(load_rgb(path, draft_size=160, root=root))
        return f'<img alt="{esc(path.name)}" src="{data_uri(png)}">'
    except (ImageReadError, ValueError) as e:
        return f'<div class="missing">unreadable: {esc(e)}</div>'


def top_losses_section(project: Project, name: str, source: dict, k: int = TOP_LOSSES) -> str:
    """The most confident OOF mistakes, as thumbnails (like fastai's plot_top_losses)."""
    probs, labels, classes = source["probs"], np.asarray(source["labels"]), source["classes"]
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != labels)
    if not len(wrong):
        return "<p>no OOF mistakes.</p>"
    conf = probs[wrong, pred[wrong]]
    order = wrong[np.argsort(-conf, kind="stable")][:k]
    cards = []
    for i in order:
        cards.append(f"<figure>{thumbnail(project.input / source['ids'][i], project.input)}<figcaption>"
                     f'<div>true <span class="good">{esc(classes[labels[i]])}</span></div>'
                     f'<div>pred <span class="bad">{esc(classes[pred[i]])}</span></div>'
                     f"<div>p = {probs[i, pred[i]]:.3f}</div>"
                     f'<div class="path">{esc(source["ids"][i])}</div></figcaption></figure>')
    return (f'<p class="meta">{esc(name)}: the {len(order)} most confident of {len(wrong)} OOF mistakes '
            f"(p = probability of the wrong prediction)</p><div class='grid'>" + "".join(cards) + "</div>")


def _compact(cell):
    """JSON lists/dicts in log.csv as short text: ["a", "b"] -> a, b; {"a": 0.99} -> a 0.99."""
    if not isinstance(cell, str) or not cell.startswith(("[", "{")):
        return cell
    try:
        value = json.loads(cell)
    except ValueError:
        return cell
    if isinstance(value, dict):
        return ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
    return ", ".join(map(str, value))


def submissions_table(log: pd.DataFrame, max_chars: int = 60) -> tuple[pd.DataFrame, list[str]]:
    """file, time, cv, lb first; JSON cells compacted; columns still too long to read left out (and named)."""
    first = [c for c in ("file", "time", "cv", "lb") if c in log]
    df = log[first + [c for c in log.columns if c not in first]].map(_compact)
    too_long = [c for c in df.columns if c not in first and (c in ("options", "biases")
                                                            or df[c].astype(str).str.len().max() > max_chars)]
    return df.drop(columns=too_long), too_long


def submissions_section(project: Project) -> str:
    log = project.submissions / "log.csv"
    if not log.exists():
        return missing("no submissions yet (submissions/log.csv): run `foldblend submit`")

    try:
        raw = read_log(project.submissions).replace("", np.nan)
    except SubmissionError as e:
        return missing(str(e))
    for column in ("cv", "lb"):
        if column in raw:
            raw[column] = pd.to_numeric(raw[column], errors="coerce")
    if raw.empty:
        return missing("submissions/log.csv has no rows yet")
    df, left_out = submissions_table(raw)
    notes = []
    if "lb" in df and df["lb"].isna().all():
        notes.append("no leaderboard score recorded yet (`foldblend submit FILE --lb SCORE` records one)")
    if left_out:
        notes.append(f"long columns ({', '.join(left_out)}) are in submissions/log.csv")
    return "".join(f'<p class="meta">{esc(n)}</p>' for n in notes) + table(df)


# ----------------------------------------------------------------------------- the page

def plan_section(project: Project) -> str:
    """`foldblend init`'s plan and what `train` did to hold its time limit: trials, epochs, decisions."""
    record = read_json(project.init_record) or {}
    kept = record.get("train")
    if not kept:
        return missing("no time-limited training (`foldblend init --time-limit` or `foldblend train --time-limit`)")
    rows = [{"member": name, "status": m["status"], "trial macro-F1": m.get("trial_score"),
             "projected": m.get("value"),
             "trial epochs": m.get("trial_epochs"), "epochs per fold": m.get("epochs"),
             "config epochs": m.get("config_epochs"), "planned s": m.get("planned_s"), "spent s": m.get("spent_s")}
            for name, m in kept.get("members", {}).items()]
    head = (f"<p>{esc(record.get('command', ''))}: training held to {kept['limit_s']:.0f} s, spent "
            f"{kept['spent_s']:.0f} s. Each member's trial on fold 0 came first; the time left went to those worth "
            f"most (a network's trial projected to its last epoch along its learning curve).</p>")
    return head + table(pd.DataFrame(rows), 3) + "<ul>" + "".join(f"<li>{esc(d)}</li>"
                                                                  for d in kept.get("decisions", [])) + "</ul>"


def build_report(project: Project) -> str:
    exps = experiment_names(project)
    blend = read_json(project.oof / "_blend" / "blend.json")
    best = best_member(project)
    sources = oof_sources(project, best, project.oof / "_blend" / "blend.npz")
    shown = "blend" if "blend" in sources else best
    sections = [
        ("plan", "Time limit", plan_section(project)),
        ("experiments", "Experiments: CV and learning curves",
         "\n".join(experiment_section(project, e) for e in exps) or missing("no experiments trained yet")),
        ("blend", "Blend", blend_section(blend)),
        ("trust", "Can I trust the CV?", trust_section(project, blend)),
        ("per-class", "Per-class F1", per_class_section(sources)),
        ("confusion", "Confusion matrix",
         confusion_section(shown, sources[shown]) if shown else missing("no OOF predictions yet")),
        ("mistakes", "Most confident mistakes",
         top_losses_section(project, shown, sources[shown]) if shown else missing("no OOF predictions yet")),
        ("neighbours", "Nearest training images", neighbours_section(project, thumbnail, missing)),
        ("submissions", "Submissions", submissions_section(project)),
    ]
    nav = "".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title, _ in sections)
    body = "".join(f'<h2 id="{sid}">{esc(title)}</h2>\n{content}\n' for sid, title, content in sections)
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>foldblend report: '
            f"{esc(project.root.name)}</title><style>{CSS}</style></head><body>"
            f"<h1>foldblend report</h1><p class='meta'>project {esc(project.root.name)}, written {stamp}; "
            f"{len(exps)} experiment(s); {'blend present' if blend else 'no blend'}</p><nav>{nav}</nav>"
            f"{body}</body></html>\n")


def write_report(project: Project) -> Path:
    """Write oof/report.html (atomically) and return its path."""
    path = project.oof / "report.html"
    say_swept(sweep_temporaries(project.oof), project)
    write_text(path, build_report(project))
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`foldblend report` takes no options: it reads the project and writes oof/report.html."""


def run(args: argparse.Namespace, project: Project) -> Path:
    path = write_report(project)
    print(f"report: {project.rel(path)} (open it in a browser; it works offline)")
    return path
