"""The shift check's files, read by the scan, folds, blend, summary and report: folds/shift.json (the verdict)
and folds/similarity.npz, and the verdict in a few lines. Torch-free, unlike the check itself (`shift_check`)."""
from __future__ import annotations

from foldblend.artifacts import read_json
from foldblend.data.shift import OPTIMISTIC_SHARE
from foldblend.paths import Project


def shift_json(project: Project):
    return project.shift_json


def similarity_npz(project: Project):
    return project.folds_dir / "similarity.npz"


def read_shift(project: Project) -> dict | None:
    return read_json(shift_json(project))


def describe_shift(result: dict | None, mode: str) -> list[str]:
    """The verdict in a few lines, for the scan's output (and the summary's and the report's)."""
    if result is None:
        return []
    auc = result.get("adversarial_auc") or {}
    lines = []
    if result.get("n_test", 0) == 0:
        lines.append("train/test shift: no test set to compare with")
    else:
        oof, test = result["oof_similarity"], result["test_similarity"]
        aucs = ", ".join(f"{k} {v:.2f}" for k, v in auc.items() if v is not None)
        lines.append(f"train/test shift: adversarial ROC AUC {aucs or 'n/a'} (0.5 = alike); nearest-train-image "
                     f"similarity: OOF median {oof['median']:.3f}, test median {test['median']:.3f}; OOF neighbour "
                     f"closer in {result['closer_share']:.0%} of (OOF, test) pairs")
        if result["optimistic"]:
            lines.append(f"WARNING: CV is optimistic: OOF images have much closer relatives in their training folds "
                         f"than test images have in train ({result['closer_share']:.0%} of pairs >= "
                         f"{OPTIMISTIC_SHARE:.0%}). CV scores images easier than the test's.")
        else:
            lines.append("  no sign that CV is optimistic: test images are as close to train as OOF images are "
                         "to their training folds")
    semantic = result.get("semantic")
    match = result.get("match")
    if match:
        lines.append(f"  folds that look like the test: semantic threshold {match['threshold']:.4f} brings the OOF "
                     f"neighbours to the test's (closer in {match['closer_share']:.0%} of pairs, Wasserstein "
                     f"{match['distance']:.3f}, was {result['distance']:.3f})" if match["threshold"] is not None else
                     "  no semantic threshold brings OOF neighbours nearer to the test's than pHash groups alone")
    if semantic:
        use = ("used by the folds" if semantic["applied"] else
               "not used: your groups win" if result.get("user_groups") else
               f"not used (dedup: {mode}; dedup: auto or semantic would use them)")
        lines.append(f"  semantic groups at similarity {semantic['threshold']:.4f} ({semantic['how']}): "
                     f"{semantic['groups_added']} groups beyond pHash join {semantic['images_in_added']} images "
                     f"(largest {semantic['largest_group']}); {use}; thumbnails in folds/eda.html")
    elif result.get("optimistic") and result.get("user_groups"):
        lines.append("  your groups (groups.csv / group column) are used as given; check that they cover what "
                     "the test separates (patients, scenes, concepts)")
    elif result.get("optimistic") and mode not in ("auto", "semantic"):
        lines.append(f"  dedup: {mode} keeps the folds as they are; dedup: auto would group by appearance to match")
    return lines
