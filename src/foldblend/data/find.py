"""Find the competition in input/: train images and labels, test images, the sample submission.

Competitions arrive in a handful of real layouts (folder per class, possibly nested one level; or a
labels CSV next to an image folder), so the pipeline detects the layout instead of asking for a config.
Anything detected can be overridden in `input/competition.yaml`, a typed config (`data.competition_config`):
an unknown key, a wrong type or a bad value there is an error naming the key and the file.

A labelled folder alone is a competition too (album covers, illustration classes): without a sample
submission and an unlabelled test folder the test set is empty (M = 0 rows), and every stage runs on it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from foldblend.data.classes import ClassOrderError, order_classes
from foldblend.data.competition_config import CONFIG_NAME, CompetitionConfig, CompetitionError, read_competition_config
from foldblend.data.files import FileIndex, direct_images, pick, relpath, subdirs, walk
from foldblend.data.read import resolves_inside
from foldblend.data.tables import read_table

SAMPLE_NAMES = ("sample_submission.csv", "samplesubmission.csv")
TRAIN_CSV_NAMES = ("train.csv", "train_labels.csv", "labels.csv", "trainlabels.csv")
IMAGE_DIR_NAMES = ("train", "train_images", "images")
TRAIN_DIR_NAMES = ("train", "training", "train_images", "train_set", "trainset")
TEST_DIR_NAMES = ("test", "testset", "test_images", "test_set")
ID_NAMES = ("id", "image", "image_id", "filename", "file_name", "file", "image_name", "img", "name", "path")
LABEL_NAMES = ("label", "labels", "class", "category", "target", "class_name", "species", "breed", "genre")
GROUP_NAMES = ("group", "group_id")


def _looks_like_test(name: str) -> bool:
    """test, testset, kaggle_simpson_testset, but not latest/ or contest/."""
    return re.search(r"(^|[^a-z])test", name.lower()) is not None


@dataclass
class Competition:
    root: Path                      # the input folder
    classes: list[str]              # class names in index order
    train: pd.DataFrame             # image (posix path relative to root), label (class name)
    test: pd.DataFrame              # id (exact string from the sample), image (relative path); 0 rows: no test set
    sample: pd.DataFrame | None     # the sample submission, all strings (None: a train-only competition)
    sample_path: Path | None
    id_column: str | None           # the sample's first column
    target_columns: list[str]       # the sample's other columns
    submission_format: str | None   # from competition.yaml, else None (the writer detects it)
    test_labels_path: Path | None   # true test labels (id,label): competition.yaml's test_labels, when set
    settings: CompetitionConfig     # input/competition.yaml, defaults filled in
    ignored: list[str] = field(default_factory=list)  # non-image files skipped (relative paths)
    layout: str = ""                # how train/test were found, for humans
    class_order: str = ""           # how the class indices were chosen, for humans
    configured: set[str] = field(default_factory=set)  # the keys competition.yaml sets

    @property
    def has_test(self) -> bool:
        """Whether there is a test set to submit (a sample submission); else only train images."""
        return self.sample_path is not None

    def describe(self) -> str:
        counts = self.train["label"].value_counts()
        per_class = ", ".join(f"{c}={counts.get(c, 0)}" for c in self.classes)
        test = (f"{len(self.test)} test ids ({self.sample_path.name}: {self.id_column} + {len(self.target_columns)} "
                f"target column(s))" if self.has_test else "no test set")
        lines = [f"{self.root.name}/: {self.layout}",
                 f"  {len(self.classes)} classes, {len(self.train)} train images, {test}",
                 f"  per class: {per_class}"]
        if self.ignored:
            lines.append(f"  ignored {len(self.ignored)} non-image file(s): {', '.join(self.ignored[:5])}"
                         + (" ..." if len(self.ignored) > 5 else ""))
        return "\n".join(lines)


def load_competition(input_dir: str | Path) -> Competition:
    """Detect the layout of `input_dir` and return everything later stages need to know about it."""
    root = Path(input_dir)
    if not root.is_dir():
        raise CompetitionError(f"{root}/: folder not found; download the competition data into it "
                               "(or run `foldblend demo` for the built-in demo)")
    cfg, configured = read_competition_config(root)
    sample_path = _find_sample(root, cfg)
    if sample_path is None:  # train-only: no test set, unless an unlabelled test folder says one is missing
        sample, id_column, test_dir, labelled_test = None, None, None, _train_only_test_folder(root, cfg)
    else:
        _refuse_outside(root, sample_path, "the sample submission")
        sample = read_table(sample_path, "sample submission", "use the competition's own sample_submission.csv")
        if sample.shape[1] < 2 or sample.empty:
            raise CompetitionError(f"{sample_path}: a sample submission needs an id column, at least one target "
                                   f"column and one row (found columns {list(sample.columns)}, {len(sample)} rows)")
        id_column = sample.columns[0]
        if sample[id_column].duplicated().any():
            dup = sample[id_column][sample[id_column].duplicated()].tolist()[:5]
            raise CompetitionError(f"{sample_path}: duplicated ids in column {id_column!r}: {dup}")
        test_dir = labelled_test = _find_test_dir(root, cfg)
    if cfg.train_csv or (found := _folder_layout(root, cfg, labelled_test)) is None:
        found = _csv_layout(root, cfg)
    if found is None and sample is None and not cfg.train_dir:
        found = _classes_in_root(root)
    if found is None:
        _explain_single_class(root, cfg, test_dir)
        raise CompetitionError(
            f"{root}/: no training data found (looked for class folders such as train/<class>/*.jpg and for "
            f"{', '.join(TRAIN_CSV_NAMES)} with an image folder); set train_dir or train_csv in {root / CONFIG_NAME}")
    layout, train, ignored = found
    if cfg.group_column and not layout.startswith("labels CSV"):
        raise CompetitionError(f"{root / CONFIG_NAME}: group_column {cfg.group_column!r} names a column of a labels "
                               f"CSV, and this competition has none ({layout}); remove the key, and list the groups "
                               f"in {root.name}/groups.csv (columns image,group) instead")
    if train["label"].nunique() < 2:
        found_labels = f"every train image has the label {train['label'].iloc[0]!r}" if len(train) else "no train rows"
        raise CompetitionError(f"{root}/: {found_labels} ({layout}); a classifier needs at least two classes: "
                               f"add the other classes' images")
    if sample is None:
        test, test_ignored = pd.DataFrame({"id": pd.Series(dtype=str), "image": pd.Series(dtype=str)}), []
        layout += "; no test set (no sample submission)"
        if labelled_test is not None:
            layout += (f"; {relpath(labelled_test, root)}/ is a labelled folder: score it with "
                       f"`foldblend evaluate --data {root.name}/{relpath(labelled_test, root)} --exp blend`")
    else:
        test, test_ignored = _match_test(root, test_dir, sample[id_column].tolist())
        layout += f"; test: {relpath(test_dir, root)}/"
    _refuse_folders_outside(root, list(train["image"]) + list(test["image"]))
    try:
        classes = order_classes(train["label"].unique().tolist(), cfg.class_order or None, cfg.classes,
                                str(root / CONFIG_NAME))
    except ClassOrderError as e:
        raise CompetitionError(str(e)) from None
    labels_path = _configured(root, cfg, "test_labels", want_dir=False) if cfg.test_labels else None
    return Competition(
        root=root, classes=classes, train=train, test=test, sample=sample, sample_path=sample_path,
        id_column=id_column, target_columns=[] if sample is None else list(sample.columns[1:]),
        submission_format=cfg.submission_format, test_labels_path=labels_path, settings=cfg,
        ignored=sorted(ignored + test_ignored), layout=layout, configured=configured,
        class_order=("explicit (classes in competition.yaml)" if cfg.classes is not None else cfg.class_order
                     or "lexical (numeric when every name is an integer)"))


# ----------------------------------------------------------------------------- paths inside input/

def _refuse_outside(root: Path, path: Path, what: str) -> None:
    """Inputs are read from inside input/ only: a link out of it is an error naming the fix."""
    if not resolves_inside(path, root):
        raise CompetitionError(f"{relpath(path, root)}: {what} resolves to {path.resolve()}, outside {root.name}/ "
                               f"(a symbolic link); copy it into {root.name}/, or make {root.name}/ itself a link "
                               f"to the folder holding the whole competition")


def _refuse_folders_outside(root: Path, images: list[str]) -> None:
    """Every folder an image is read from lies inside input/ (a linked image file is the scan's business:
    it is reported as unreadable like any other bad file)."""
    for folder in sorted({Path(i).parent for i in images}):
        _refuse_outside(root, root / folder, "the image folder")


def _configured(root: Path, cfg: CompetitionConfig, key: str, want_dir: bool) -> Path:
    value = getattr(cfg, key)
    p = root / value
    if not resolves_inside(p, root):
        raise CompetitionError(f"{root / CONFIG_NAME}: {key} {value!r} points outside {root.name}/ "
                               f"({p.resolve()}); name a path inside {root.name}/ (move the files there, or make "
                               f"{root.name}/ itself a link to the folder holding the whole competition)")
    if not (p.is_dir() if want_dir else p.is_file()):
        raise CompetitionError(f"{root / CONFIG_NAME}: {key} {value!r} is not a "
                               f"{'folder' if want_dir else 'file'} in {root}/; fix the path")
    return p


# ----------------------------------------------------------------------------- detection

def _find_sample(root: Path, cfg: CompetitionConfig) -> Path | None:
    """The sample submission, or None when there is none (a train-only competition)."""
    if cfg.sample_submission:
        return _configured(root, cfg, "sample_submission", want_dir=False)
    if (p := pick(root, SAMPLE_NAMES)) is not None:
        return p
    matches = sorted(p for p in root.iterdir()
                     if p.is_file() and re.fullmatch(r"sample_?submission.*\.csv", p.name, re.I))
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise CompetitionError(f"{root}/: several sample submissions ({', '.join(p.name for p in matches)}); "
                               f"set sample_submission in {root / CONFIG_NAME}")
    return None


def _train_only_test_folder(root: Path, cfg: CompetitionConfig) -> Path | None:
    """Without a sample: a labelled test folder (test/<class>/) is fine and returned; an unlabelled one
    means the sample is missing (its ids and format are needed to predict it), which is an error."""
    if cfg.test_dir:
        raise CompetitionError(f"{root / CONFIG_NAME}: test_dir is set but no sample submission was found; put the "
                               f"competition's sample CSV in {root}/ or set sample_submission (a train-only task "
                               f"needs neither: remove test_dir)")
    d = _find_test_dir(root, cfg, required=False)
    if d is None or _class_root(d) is not None:
        return d
    raise CompetitionError(f"{root}/: {relpath(d, root)}/ holds unlabelled test images, but no sample submission found "
                           f"(looked for sample_submission.csv, sampleSubmission.csv, sample_submission*.csv); "
                           f"put the competition's sample CSV there or set sample_submission in {root / CONFIG_NAME}. "
                           f"For a train-only task move {relpath(d, root)}/ out of {root.name}/ (and predict it later "
                           f"with `foldblend predict --images`)")


def _find_test_dir(root: Path, cfg: CompetitionConfig, required: bool = True) -> Path | None:
    if cfg.test_dir:
        d = _configured(root, cfg, "test_dir", want_dir=True)
    else:
        d = pick(root, TEST_DIR_NAMES, want_dir=True)
        fuzzy = [s for s in subdirs(root) if _looks_like_test(s.name)]
        d = d or (fuzzy[0] if len(fuzzy) == 1 else None)
        if d is None and not required:
            return None
        if d is None:
            raise CompetitionError(f"{root}/: no test image folder found (looked for {', '.join(TEST_DIR_NAMES)}); "
                                   f"put the test images there or set test_dir in {root / CONFIG_NAME}")
    subs = subdirs(d)  # testset/testset/*.png: the zip's own folder inside ours
    return subs[0] if len(subs) == 1 and not direct_images(d) else d


def _class_root(d: Path) -> tuple[Path, dict[str, list[Path]], list[Path]] | None:
    """(folder whose sub-folders are classes, images per class, other files) if d is a folder per class."""
    d, per_class, others, loose = _class_folders(d)
    if len(per_class) < 2 or len(loose) >= sum(map(len, per_class.values())):
        return None  # a flat image folder (CSV layout) or a single class is not a folder per class
    return d, per_class, others + loose


def _explain_single_class(root: Path, cfg: CompetitionConfig, test_dir: Path | None) -> None:
    """A folder-per-class layout with one class folder: say that, not "no training data found"."""
    if cfg.train_csv or pick(root, TRAIN_CSV_NAMES) is not None:
        return
    skip = set() if test_dir is None else {test_dir, *test_dir.parents}
    for s in ([root / cfg.train_dir] if cfg.train_dir else [s for s in subdirs(root) if s not in skip]):
        d, per_class, _, loose = _class_folders(s)
        if len(per_class) == 1 and len(loose) < sum(map(len, per_class.values())):
            raise CompetitionError(f"{relpath(d, root)}/: only one class folder ({next(iter(per_class))}/) holds "
                                   f"images; a classifier needs at least two classes: add the other classes' "
                                   f"folders next to it")


def _class_folders(d: Path) -> tuple[Path, dict[str, list[Path]], list[Path], list[Path]]:
    """(the folder whose sub-folders look like classes, images per sub-folder, other files, loose images)."""
    for _ in range(3):  # descend train/simpsons_dataset/<class>, train/train/<class>
        subs = subdirs(d)
        if len(subs) == 1 and not direct_images(subs[0]) and subdirs(subs[0]):
            d = subs[0]
        else:
            break
    per_class, others = {}, []
    for s in subdirs(d):
        images, rest = walk(s)
        others += rest
        if images:
            per_class[s.name] = images
    return d, per_class, others, direct_images(d)


def _folder_layout(root: Path, cfg: CompetitionConfig, test_dir: Path | None):
    if cfg.train_dir:
        d = _configured(root, cfg, "train_dir", want_dir=True)
        if (found := _class_root(d)) is None:
            if pick(root, TRAIN_CSV_NAMES) is not None:
                return None  # train_dir is the image folder of a labels-CSV layout
            raise CompetitionError(f"{d}: train_dir holds no class sub-folders with images; put images in "
                                   f"{d.name}/<class>/ or set train_csv in {root / CONFIG_NAME}")
    else:
        skip = {test_dir, *test_dir.parents} if test_dir is not None else set()
        candidates = [s for s in subdirs(root) if s not in skip and not _looks_like_test(s.name)]
        preferred = sorted((s for s in candidates if s.name.lower() in TRAIN_DIR_NAMES),
                           key=lambda s: TRAIN_DIR_NAMES.index(s.name.lower()))
        found = next((hit for s in preferred if (hit := _class_root(s)) is not None), None)
        if found is None:  # an unusual name such as simpsons_dataset/: accept it when it is the only one
            hits = [hit for s in candidates if s not in preferred and (hit := _class_root(s)) is not None]
            if len(hits) > 1:
                found_in = ", ".join(relpath(h[0], root) for h in hits)
                raise CompetitionError(f"{root}/: class folders found in {found_in}; "
                                       f"set train_dir in {root / CONFIG_NAME}")
            if not hits:
                return None
            found = hits[0]
    return _per_class_table(root, *found)


def _classes_in_root(root: Path):
    """Train-only, with the class folders directly in input/ (input/<class>/*.jpg)."""
    found = _class_root(root)
    return None if found is None else _per_class_table(root, *found)


def _per_class_table(root: Path, d: Path, per_class: dict[str, list[Path]], others: list[Path]):
    rows = [(relpath(p, root), label) for label, images in per_class.items() for p in images]
    train = pd.DataFrame(rows, columns=["image", "label"])
    where = "." if d == root else relpath(d, root)
    return f"folder per class: {where}/<class>/", train, [relpath(p, root) for p in others]


def _guess(columns: list[str], names: tuple[str, ...], exclude: tuple[str, ...] = ()) -> str | None:
    lower = {c.lower(): c for c in columns if c not in exclude}
    return next((lower[n] for n in names if n in lower), None)


def _csv_layout(root: Path, cfg: CompetitionConfig):
    csv = _configured(root, cfg, "train_csv", False) if cfg.train_csv else pick(root, TRAIN_CSV_NAMES)
    if csv is None:
        return None
    _refuse_outside(root, csv, "the labels CSV")
    df = read_table(csv, "labels CSV", "fix the file or set train_csv in " + str(root / CONFIG_NAME))
    cols = list(df.columns)
    id_col = cfg.id_column or _guess(cols, ID_NAMES) or cols[0]
    image_col = cfg.image_column or id_col
    group_col = cfg.group_column or _guess(cols, GROUP_NAMES, exclude=(id_col, image_col))
    label_col = cfg.label_column or _guess(cols, LABEL_NAMES, exclude=(id_col, image_col, group_col))
    rest = [c for c in cols if c not in (id_col, image_col, group_col)]
    if label_col is None and len(rest) == 1:
        label_col = rest[0]
    for key, col in (("id_column", id_col), ("image_column", image_col), ("label_column", label_col),
                     ("group_column", group_col)):
        if col is not None and col not in cols:
            raise CompetitionError(f"{csv}: no column {col!r} (columns: {cols}); fix {key} in {root / CONFIG_NAME}")
    if label_col is not None:
        labels = df[label_col].str.strip()
    elif rest and all(df[c].isin(["0", "1", "0.0", "1.0"]).all() for c in rest) and \
            (df[rest].astype(float).sum(axis=1) == 1).all():
        labels = df[rest].astype(float).idxmax(axis=1)  # one-hot columns, e.g. healthy,rust,scab
    else:
        raise CompetitionError(f"{csv}: cannot tell which column holds the label (columns: {cols}); "
                               f"set label_column in {root / CONFIG_NAME}")
    if (labels == "").any():
        rows = (df.index[labels == ""] + 2).tolist()[:5]  # +2: header line and 1-based lines
        raise CompetitionError(f"{csv}: empty label on line(s) {rows}; fill them in or drop those rows")
    image_dir = _configured(root, cfg, "train_dir", True) if cfg.train_dir else pick(root, IMAGE_DIR_NAMES, True)
    if image_dir is None:
        raise CompetitionError(f"{root}/: {csv.name} found but no image folder ({', '.join(IMAGE_DIR_NAMES)}); "
                               f"set train_dir in {root / CONFIG_NAME}")
    index = FileIndex(image_dir, root, "train")
    images = [index.find(v) for v in df[image_col]]
    _raise_missing(df[image_col], images, image_dir, root, "train_dir")
    train = pd.DataFrame({"image": images, "label": labels.to_numpy()})
    if group_col is not None:  # the user's groups (same patient, scene, product): they win over any dedup
        groups = df[group_col].str.strip()
        train["group"] = groups.where(groups != "", None).to_numpy(dtype=object)
    return f"labels CSV: {csv.name} ({image_col} -> {relpath(image_dir, root)}/)", train, index.others


def _raise_missing(ids, found, folder: Path, root: Path, key: str) -> None:
    missing = [i for i, f in zip(ids, found) if f is None]
    if missing:
        raise CompetitionError(
            f"{relpath(folder, root)}/: no image file for {len(missing)} id(s), e.g. {missing[:5]} (matched as file "
            f"name, stem, id + image extension, or relative path); add the files or set {key} in {root / CONFIG_NAME}")


def _match_test(root: Path, test_dir: Path, ids: list[str]) -> tuple[pd.DataFrame, list[str]]:
    index = FileIndex(test_dir, root)
    images = [index.find(i) for i in ids]
    _raise_missing(ids, images, test_dir, root, "test_dir")
    return pd.DataFrame({"id": ids, "image": images}), index.others
