"""Fuzzing the readers of files people hand us or edit by hand: every failure is a foldblend error with a
message (one line in the CLI), never another exception. Random bytes, truncated rows, odd encodings,
quotes and separators in odd places, for the sample submission, the labels CSV, competition.yaml,
folds.csv, submissions/log.csv and a bundle's bundle.json."""
from __future__ import annotations

import codecs
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_predict import make_experiment

from foldblend.data.find import load_competition
from foldblend.data.freshness import changed_since_scan
from foldblend.data.split import read_folds
from foldblend.errors import FoldblendError
from foldblend.inference.bundle import export_bundle, load_bundle
from foldblend.paths import Project
from foldblend.submission.log import record_lb

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

VALID_SAMPLE = "Id,Expected\nt0.png,a\nt1.png,a\n"
VALID_LABELS = "id,label\np0,a\np1,a\np2,b\np3,b\n"
VALID_FOLDS = "image,label,group,fold\nx.png,a,0,0\ny.png,b,1,1\n"
VALID_LOG = "file,time,cv,lb,format,status\nx_cv0.5.csv,2024-01-01T00:00:00+00:00,0.5,,label,written\n"

# pieces CSV parsers trip over, mixed into otherwise plausible text
PIECES = [",", '"', "\n", "\r\n", "\r", ";", "\t", "\0", "\ufeff", "é", "ü", "\u2028", "Id", "Expected", "t0.png",
          "a", "b", "file", "label", "fold", "group", "0", "1", "-1", "1e5", "NaN", "", " ", "'", "#", "\\"]
ENCODINGS = ["utf-8", "utf-8-sig", "latin-1", "utf-16", "utf-16-le", "cp1252", "shift_jis"]


def _encode(text: str, encoding: str) -> bytes:
    return codecs.encode(text, encoding, errors="replace")


def contents(valid: str):
    """Random bytes; a valid file cut anywhere; text assembled from parser-hostile pieces in some encoding."""
    return st.one_of(
        st.binary(max_size=200),
        st.integers(0, len(valid)).map(lambda k: valid.encode()[:k]),
        st.builds(_encode, st.lists(st.sampled_from(PIECES), max_size=30).map("".join), st.sampled_from(ENCODINGS)),
        st.builds(lambda cut, junk: valid.encode()[:cut] + junk + valid.encode()[cut:],
                  st.integers(0, len(valid)), st.binary(min_size=1, max_size=8)),
    )


def _loads_or_says_why(fn, *args):
    try:
        fn(*args)
    except FoldblendError as e:
        assert str(e).strip(), "a foldblend error must say what is wrong"
    # any other exception type fails the test, with hypothesis's smallest example


def _images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (4, 4), (200, 10, 10)).save(folder / name)


@pytest.fixture(scope="module")
def folder_layout(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz") / "input"
    _images(root / "train" / "a", ["a0.png", "a1.png"])
    _images(root / "train" / "b", ["b0.png", "b1.png"])
    _images(root / "test", ["t0.png", "t1.png"])
    return root


@pytest.fixture(scope="module")
def csv_layout(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz_csv") / "input"
    _images(root / "images", [f"p{i}.png" for i in range(4)])
    _images(root / "test", ["t0.png", "t1.png"])
    (root / "sample_submission.csv").write_text(VALID_SAMPLE)
    return root


@FUZZ
@given(data=contents(VALID_SAMPLE))
def test_sample_submission_reader(folder_layout, data):
    (folder_layout / "sample_submission.csv").write_bytes(data)
    _loads_or_says_why(load_competition, folder_layout)


@FUZZ
@given(data=contents(VALID_LABELS))
def test_labels_csv_reader(csv_layout, data):
    (csv_layout / "train.csv").write_bytes(data)
    _loads_or_says_why(load_competition, csv_layout)


@FUZZ
@given(data=contents("n_splits: 2\ndedup: off\nclasses: [a, b]\ntest_dir: test\n"))
def test_competition_yaml_reader(folder_layout, data):
    (folder_layout / "sample_submission.csv").write_text(VALID_SAMPLE)
    (folder_layout / "competition.yaml").write_bytes(data)
    try:
        _loads_or_says_why(load_competition, folder_layout)
    finally:
        (folder_layout / "competition.yaml").unlink()


@FUZZ
@given(data=contents(VALID_FOLDS))
def test_folds_csv_reader(tmp_path, data):
    (tmp_path / "folds.csv").write_bytes(data)
    _loads_or_says_why(read_folds, tmp_path / "folds.csv")


@FUZZ
@given(data=contents(VALID_LOG))
def test_submissions_log_reader(tmp_path, data):
    out = tmp_path / "submissions"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    (out / "x_cv0.5.csv").write_text("Id,Expected\n")
    (out / "log.csv").write_bytes(data)
    _loads_or_says_why(record_lb, out, "x_cv0.5.csv", 0.5)


@FUZZ
@given(data=contents("image,bytes,mtime_ns\ntrain/a/a0.png,10,5\n"))
def test_a_broken_scan_table_only_means_rescanning(folder_layout, data):
    scan = folder_layout.parent / "scan.csv"
    scan.write_bytes(data)
    assert changed_since_scan(scan, folder_layout, ["train/a/a0.png"]) == ["train/a/a0.png"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    project = Project.at(tmp_path_factory.mktemp("fuzz_bundle") / "proj")
    make_experiment(project, "exp_a", folds=1, img_size=8, tta=("identity",), seed=0)
    return export_bundle(project, "exp_a", project.root / "export" / "a")


@pytest.fixture(scope="module")
def valid_bundle_json(bundle) -> str:
    return (bundle / "bundle.json").read_text()


def test_bundle_json_reader(bundle, valid_bundle_json):
    @FUZZ
    @given(data=contents(valid_bundle_json))
    def fuzz(data):
        (bundle / "bundle.json").write_bytes(data)
        _loads_or_says_why(load_bundle, bundle)

    try:
        fuzz()
    finally:
        (bundle / "bundle.json").write_text(valid_bundle_json)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                        max_size=3), max_leaves=6)


def _replace_somewhere(doc, choices: list[int], value):
    """`doc` with one value (picked by `choices`, level by level) replaced by `value`, or deleted if None."""
    node, parents = doc, []
    for c in choices:
        if not isinstance(node, (dict, list)) or not node:
            break
        key = list(node)[c % len(node)] if isinstance(node, dict) else c % len(node)
        parents.append((node, key))
        node = node[key]
    if parents:
        holder, key = parents[-1]
        if value is None and isinstance(holder, dict):
            del holder[key]
        else:
            holder[key] = value
    return doc


def test_bundle_json_schema(bundle, valid_bundle_json):
    """Valid JSON with one value anywhere changed, retyped or deleted: loads, or a foldblend error says why."""
    @FUZZ
    @given(choices=st.lists(st.integers(0, 50), min_size=1, max_size=6), value=JSON_VALUES)
    def fuzz(choices, value):
        doc = _replace_somewhere(json.loads(valid_bundle_json), choices, value)
        (bundle / "bundle.json").write_text(json.dumps(doc))
        _loads_or_says_why(load_bundle, bundle)

    try:
        fuzz()
    finally:
        (bundle / "bundle.json").write_text(valid_bundle_json)
