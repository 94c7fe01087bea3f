"""Does a time-limited plan (`foldblend init --time-limit`) hold its limit and beat a plain network within it?

For each competition (`styles`: `styles.py`'s drawn shapes and glyphs, test in unseen drawing styles, as
`recipes.py` builds it; `arrangements`: `arrangements.py`'s "where is the cross", test in unseen colours
and backgrounds, where networks from scratch beat ImageNet features) in DIR/<comp>/:

1. the competition in DIR/<comp>/input/ (test labels known);
2. in DIR/<comp>/run/ (a copy of input/): `foldblend scan`, `folds`, and `init --no-probe` (the preset's
   nominal configs, kept in DIR/<comp>/nominal/ and not timed);
3. one plain network (`recipes.plain_network`: a bare loop, every train image, no folds, no TTA) with the
   nominal main from-scratch member's architecture, size, batch, lr and epochs: wall seconds T, test macro-F1;
4. the limit L = --multiple x T; with --load a CPU-heavy process (a torch matmul loop, 2 threads) starts
   now and runs until the pipeline ends;
5. `init --force --time-limit <L>s`, `train`, `blend --method greedy --tta weighted --bias`, `submit`,
   as run.sh does, init, train and blend each timed (wall seconds);
6. scores: the written submission's test macro-F1, each member's alone (the mean over folds of its
   softmax on the identity view), the best member, the gain over plain, (init + train) / L (the target:
   at most 1.05), the members init chose and dropped and the train stage's record (init.json's "train",
   when present) as JSON lines;
7. init run again in a project copy (same input, scan and folds; after the pipeline, under the same load):
   does it choose the same members at the same epochs? (the target: yes on a quiet machine);
8. with --alone: every network member (kind cnn) of the plan trained alone at its nominal epochs in a
   project copy of its own (same folds), and scored (costly).

Prints one table per competition and a summary (markdown) and writes DIR/planner.json with every number.
Times are wall-clock seconds on this machine, in this run; the load average is printed at start and end.

    .venv/bin/python bench/planner.py --work DIR [--competitions styles arrangements] [--load] [--multiple 5]
        [--alone] [--per-class N] [--folds K]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).parent))
import arrangements  # noqa: E402
import styles  # noqa: E402
from recipes import BLEND, plain_network, run  # noqa: E402

from foldblend.metrics import softmax  # noqa: E402

# the per-class train images each competition gets by default (the largest class), and its imbalance
COMPETITIONS = {"styles": (50, 4.0), "arrangements": (200, 2.0)}
LOAD = ("import torch\ntorch.set_num_threads(2)\na = torch.randn(512, 512)\n"
        "while True:\n    a = torch.tanh(a @ a)\n")


def build(comp: str, root: Path, per_class: int | None, test_per_class: int | None, seed: int) -> Path:
    """The competition's input/ in `root`, with test labels in input/test_labels.csv."""
    n, imbalance = COMPETITIONS[comp]
    n = per_class or n
    if comp == "styles":
        return styles.write_competition(root, per_class=n, test_per_class=test_per_class or 12, seed=seed,
                                        classes=styles.CLASSES + styles.GLYPH_CLASSES, imbalance=imbalance)
    return arrangements.write_competition(root, per_class=n, test_per_class=test_per_class or 40, seed=seed,
                                          imbalance=imbalance)


def macro_f1(truth: pd.DataFrame, ids, labels) -> float:
    pred = pd.Series(np.asarray(labels).astype(str), index=np.asarray(ids).astype(str))
    return float(f1_score(truth["Expected"], pred[truth["Id"]].to_numpy(), average="macro"))


def member_score(root: Path, name: str, truth: pd.DataFrame) -> dict:
    """A member's test macro-F1 alone: the mean over folds of its softmax on the identity view (and on
    every view, as recipes.py), and its training seconds over its folds."""
    classes = np.asarray(json.loads((root / "oof" / name / "scores.json").read_text())["classes"])
    with np.load(root / "oof" / name / "test.npz") as z:
        probs, ids, views = softmax(z["logits"]), z["ids"], [str(v) for v in z["views"]]
    identity = probs[:, views.index("identity")] if "identity" in views else probs[:, 0]
    seconds = sum(json.loads(p.read_text())["seconds"] for p in (root / "models" / name).glob("fold_*/time.json"))
    return {"test": macro_f1(truth, ids, classes[identity.mean(0).argmax(1)]),
            "test_all_views": macro_f1(truth, ids, classes[probs.mean((0, 1)).argmax(1)]), "seconds": seconds}


def submission_score(root: Path, truth: pd.DataFrame) -> tuple[str, float]:
    files = [p for p in (root / "submissions").glob("*.csv") if p.name != "log.csv"]
    newest = max(files, key=lambda p: p.stat().st_mtime_ns)
    sub = pd.read_csv(newest, dtype=str)
    return newest.name, macro_f1(truth, sub.iloc[:, 0], sub.iloc[:, 1])


def kind(config: Path) -> str:
    return (yaml.safe_load(config.read_text()) or {}).get("kind", "cnn")


def project_copy(comp_dir: Path, name: str) -> Path:
    """A copy of run/'s input and its scan's and split's files (no fold config, no plan) in comp_dir/name."""
    root = comp_dir / name
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(comp_dir / "run" / "input", root / "input")
    (root / "folds").mkdir(parents=True)
    for p in (comp_dir / "run" / "folds").iterdir():
        if p.is_file() and p.suffix != ".yaml" and p.name != "init.json":
            shutil.copy2(p, root / "folds" / p.name)
    return root


def plan_of(root: Path) -> dict:
    """The members init chose and their epochs."""
    members = json.loads((root / "folds" / "init.json").read_text())["members"]
    return {name: m.get("epochs") for name, m in members.items()}


def alone(comp_dir: Path, name: str, truth: pd.DataFrame) -> dict:
    """`name` trained alone at its nominal config in a project copy (same input, scan and folds)."""
    root = project_copy(comp_dir, f"alone_{name}")
    shutil.copy2(comp_dir / "nominal" / f"{name}.yaml", root / "folds" / f"{name}.yaml")
    seconds = run(root, "train", "--quiet")
    return {"member": name, **member_score(root, name, truth), "wall": seconds}


def competition(comp: str, work: Path, args) -> dict:
    comp_dir = work / comp
    shutil.rmtree(comp_dir, ignore_errors=True)
    data = build(comp, comp_dir, args.per_class, args.test_per_class, args.seed)
    truth = pd.read_csv(data / "test_labels.csv", dtype=str)
    root = comp_dir / "run"
    shutil.copytree(data, root / "input", ignore=shutil.ignore_patterns("test_labels.csv"))
    if args.folds:
        (root / "input" / "competition.yaml").write_text(f"n_splits: {args.folds}\n")
    seconds = {stage: run(root, stage, "--quiet") for stage in ("scan", "folds")}

    run(root, "init", "--no-probe", "--quiet")  # the preset's nominal configs: the plain network's and --alone's
    (comp_dir / "nominal").mkdir()
    for p in (root / "folds").glob("*.yaml"):
        shutil.copy2(p, comp_dir / "nominal" / p.name)
    nominal = json.loads((root / "folds" / "init.json").read_text())
    main_member = next(n for n, m in nominal["members"].items() if m["role"] == "from scratch")
    cfg = yaml.safe_load((comp_dir / "nominal" / f"{main_member}.yaml").read_text())
    plain = plain_network(data, cfg, truth)
    plain_f1, plain_s = plain["test (unseen styles)"], plain["seconds"]
    limit = int(round(args.multiple * plain_s))
    print(f"{comp}: {plain['run']}: {plain_s:.0f} s, test macro-F1 {plain_f1:.3f}; time limit {limit} s", flush=True)

    load = None
    if args.load:
        load = subprocess.Popen([sys.executable, "-c", LOAD], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"load: a torch matmul loop with 2 threads beside the pipeline (pid {load.pid})", flush=True)
    failed, repeat = None, None
    try:
        for stage, stage_args in [("init", ["--force", "--time-limit", f"{limit}s"]), ("train", ["--quiet"]),
                                  ("blend", BLEND), ("submit", [])]:
            seconds[stage] = run(root, stage, *stage_args)
    except SystemExit as e:  # e.g. a limit so short that no member finished: recorded, and the next competition runs
        failed = str(e)
        print(f"{comp}: {failed}; the stages after it did not run", flush=True)
    else:
        again = project_copy(comp_dir, "repeat_init")
        run(again, "init", "--time-limit", f"{limit}s", "--quiet")
        repeat = {"first": plan_of(root), "second": plan_of(again)}
        repeat["same_members"] = set(repeat["first"]) == set(repeat["second"])
        repeat["same_epochs"] = repeat["first"] == repeat["second"]
        print(f"{comp}: init again in a copy: same members {repeat['same_members']}, same epochs "
              f"{repeat['same_epochs']}", flush=True)
    finally:
        if load is not None:
            load.terminate()
            load.wait()
            print(f"load: ran for the pipeline's init, train, blend and submit; stopped (pid {load.pid})")

    record = json.loads((root / "folds" / "init.json").read_text())
    members = {name: member_score(root, name, truth) for name in record["members"]
               if (root / "oof" / name / "test.npz").exists()}
    for stage in ("init", "train", "blend", "submit"):
        seconds.setdefault(stage, float("nan"))
    sub_name, sub_f1 = submission_score(root, truth) if failed is None else ("-", float("nan"))
    best = max(members, key=lambda n: members[n]["test"]) if members else None
    result = {
        "competition": comp, "train_images": sum(1 for _ in (data / "train").rglob("*.png")),
        "test_images": len(truth), "plain": {"model": cfg["model"], "img_size": cfg["img_size"],
                                             "epochs": cfg["epochs"], "seconds": plain_s, "test": plain_f1},
        "limit_s": limit, "load": bool(args.load), "failed": failed, "seconds": seconds,
        "init_train_over_limit": (seconds["init"] + seconds["train"]) / limit,
        "train_over_limit": seconds["train"] / limit,
        "submission": sub_name, "test": sub_f1, "gain_over_plain": sub_f1 - plain_f1,
        "best_member": best, "best_member_test": members[best]["test"] if best else None,
        "members": members, "planned_s": record.get("planned_s"),
        "init_members": record["members"], "dropped": record["dropped"], "train_record": record.get("train"),
        "repeat_init": repeat,
    }
    if args.alone:
        networks = [n for n in record["members"] if kind(comp_dir / "nominal" / f"{n}.yaml") == "cnn"]
        result["alone"] = [alone(comp_dir, name, truth) for name in networks]
    return result


def markdown(rows: list[dict]) -> str:
    """A markdown table of `rows` (the first row's keys as columns); floats to 3 places, NaN blank."""
    def cell(v) -> str:
        if isinstance(v, float):
            return "" if np.isnan(v) else f"{v:.3f}"
        return str(v)
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows])


def report(r: dict) -> None:
    s = r["seconds"]
    print(f"\n## {r['competition']}: {r['train_images']} train / {r['test_images']} test images, "
          f"limit {r['limit_s']} s ({r['plain']['model']} plain: {r['plain']['seconds']:.0f} s)"
          f"{' under load' if r['load'] else ''}\n")
    rows = [{"what": f"plain network ({r['plain']['model']}, {r['plain']['img_size']} px, {r['plain']['epochs']} ep)",
             "test macro-F1": r["plain"]["test"], "seconds": r["plain"]["seconds"], "x limit": np.nan},
            {"what": f"submission {r['submission']}", "test macro-F1": r["test"],
             "seconds": s["init"] + s["train"] + s["blend"], "x limit": (s["init"] + s["train"] + s["blend"])
             / r["limit_s"]},
            {"what": "  init", "test macro-F1": np.nan, "seconds": s["init"], "x limit": s["init"] / r["limit_s"]},
            {"what": "  train", "test macro-F1": np.nan, "seconds": s["train"], "x limit": r["train_over_limit"]},
            {"what": "  init + train (target <= 1.05)", "test macro-F1": np.nan, "seconds": s["init"] + s["train"],
             "x limit": r["init_train_over_limit"]},
            {"what": "  blend", "test macro-F1": np.nan, "seconds": s["blend"], "x limit": s["blend"] / r["limit_s"]}]
    rows += [{"what": f"member {n}", "test macro-F1": m["test"], "seconds": m["seconds"],
              "x limit": m["seconds"] / r["limit_s"]} for n, m in r["members"].items()]
    rows += [{"what": f"alone {a['member']} (nominal epochs)", "test macro-F1": a["test"], "seconds": a["wall"],
              "x limit": a["wall"] / r["limit_s"]} for a in r.get("alone", [])]
    print(markdown(rows))
    if r["failed"]:
        print(f"\nFAILED: {r['failed']}")
    print(f"\ngain over plain {r['gain_over_plain']:+.3f}; best member {r['best_member']} "
          f"({r['best_member_test'] if r['best_member_test'] is None else round(r['best_member_test'], 3)}); "
          f"planned {r['planned_s']} s of training")
    print("members:", json.dumps({n: {k: m.get(k) for k in ("role", "model", "img_size", "epochs", "estimate_s")}
                                  for n, m in r["init_members"].items()}))
    print("dropped:", json.dumps(r["dropped"]))
    if r.get("repeat_init"):
        print("init again:", json.dumps(r["repeat_init"]))
    train = r["train_record"]
    if train is not None:
        print("train:")
        for line in json_lines(train):
            print(json.dumps(line, default=str))


def json_lines(record) -> list[dict]:
    """init.json's "train" as lines: its scalars in one, then one per member (or other mapping entry), one
    per decision (or other list item)."""
    if not isinstance(record, dict):
        return [{"train": record}]
    lines = [{k: v for k, v in record.items() if not isinstance(v, (dict, list))}]
    for key, value in record.items():
        if isinstance(value, dict):
            lines += [{key: name, **info} if isinstance(info, dict) else {key: name, "value": info}
                      for name, info in value.items()]
        elif isinstance(value, list):
            lines += [{key: item} for item in value]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="a folder for the competitions (DIR/<comp>/ is replaced)")
    ap.add_argument("--competitions", nargs="+", default=list(COMPETITIONS), choices=list(COMPETITIONS))
    ap.add_argument("--multiple", type=float, default=5.0, help="the time limit, in plain-network wall times")
    ap.add_argument("--load", action="store_true", help="a CPU-heavy process beside init, train, blend and submit")
    ap.add_argument("--alone", action="store_true", help="also train each network member alone (costly)")
    defaults = ", ".join(f"{c} {n}" for c, (n, _) in COMPETITIONS.items())
    ap.add_argument("--per-class", type=int, default=None,
                    help=f"train images of the largest class (default: {defaults})")
    ap.add_argument("--test-per-class", type=int, default=None, help="default: styles 12, arrangements 40")
    ap.add_argument("--folds", type=int, default=None, help="n_splits (default: foldblend's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    start = os.getloadavg()[0]
    results = []
    for comp in args.competitions:
        results.append(competition(comp, work, args))
        report(results[-1])
    end = os.getloadavg()[0]
    print(f"\n## summary (limit = {args.multiple:g} x plain; load average {start:.1f} at start, {end:.1f} at end on "
          f"{os.cpu_count()} cores{'; --load' if args.load else ''})\n")
    print(markdown([{
        "competition": r["competition"], "plain": r["plain"]["test"], "plain s": r["plain"]["seconds"],
        "limit s": r["limit_s"], "submission": r["test"], "gain": r["gain_over_plain"],
        "best member": f"{r['best_member']} {r['best_member_test']:.3f}" if r["best_member"] else "-",
        "init s": r["seconds"]["init"], "train s": r["seconds"]["train"], "blend s": r["seconds"]["blend"],
        "(init+train)/L": r["init_train_over_limit"], "members": len(r["members"]), "dropped": len(r["dropped"]),
        "init again": "-" if not r.get("repeat_init") else
        "same" if r["repeat_init"]["same_epochs"] else
        "same members" if r["repeat_init"]["same_members"] else "other members",
    } for r in results]))
    out = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "load_average": {"start": start, "end": end}, "results": results}
    (work / "planner.json").write_text(json.dumps(out, indent=1, default=str))
    print(f"\nwrote {work / 'planner.json'}")


if __name__ == "__main__":
    main()
