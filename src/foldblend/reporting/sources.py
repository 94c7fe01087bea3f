"""What the report and the web app read back from oof/: the best member and the OOF sources (ids, labels,
probabilities, classes) of that member and of the blend.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from foldblend.artifacts import load_member, read_json
from foldblend.metrics import softmax
from foldblend.paths import Project


def best_member(project: Project) -> str | None:
    """The finished member with the highest OOF macro-F1."""
    best, best_score = None, -1.0
    for p in sorted(project.oof.glob("*/oof.npz")):
        if p.parent.name.startswith("_"):
            continue
        s = (read_json(p.parent / "scores.json") or {}).get("overall", {}).get("macro_f1", -1.0)
        if s > best_score:
            best, best_score = p.parent.name, s
    return best


def oof_sources(project: Project, best: str | None, blend_npz: Path) -> dict[str, dict]:
    """{name: {ids, labels, probs, classes}} for the best member and the blend, whichever exist."""
    out = {}
    if best is not None:
        m = load_member(project.oof_dir(best))
        out[best] = {"ids": m.ids, "labels": m.labels, "probs": softmax(m.oof_logits).mean(axis=0),
                     "classes": m.classes}
    if blend_npz.exists():
        with np.load(blend_npz, allow_pickle=False) as z:
            out["blend"] = {"ids": z["ids"].astype(str), "labels": z["labels"], "probs": z["oof_probs"],
                            "classes": [str(c) for c in z["classes"]]}
    return out
