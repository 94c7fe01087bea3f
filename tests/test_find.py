"""Layout detection on tiny generated copies of real Kaggle layouts."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from foldblend.data.competition_config import CompetitionConfig
from foldblend.data.find import CompetitionError, load_competition

_PNG = io.BytesIO()
Image.new("RGB", (4, 4), (10, 20, 30)).save(_PNG, format="PNG")
PNG = _PNG.getvalue()


def touch(root: Path, *rels: str, data: bytes = PNG) -> None:
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")


def sample(root: Path, ids, name="sample_submission.csv", header="Id,Expected"):
    targets = ",x" * (header.count(","))  # one placeholder per target column: samples are complete tables
    write(root, name, header + "\n" + "".join(f"{i}{targets}\n" for i in ids))


@pytest.mark.parametrize("train_dir", ["train", "train/simpsons_dataset", "simpsons_dataset", "train/train"])
@pytest.mark.parametrize("test_dir", ["test", "testset/testset", "kaggle_simpson_testset"])
def test_folder_per_class_layouts(tmp_path, train_dir, test_dir):
    touch(tmp_path, f"{train_dir}/bart/a.jpg", f"{train_dir}/bart/b.JPEG", f"{train_dir}/homer/c.png",
          f"{test_dir}/t1.jpg", f"{test_dir}/t2.png")
    sample(tmp_path, ["t1.jpg", "t2.png"])
    comp = load_competition(tmp_path)
    assert comp.classes == ["bart", "homer"]
    assert sorted(comp.train["image"]) == [f"{train_dir}/bart/a.jpg", f"{train_dir}/bart/b.JPEG",
                                           f"{train_dir}/homer/c.png"]
    assert comp.train.set_index("image").loc[f"{train_dir}/homer/c.png", "label"] == "homer"
    assert comp.test["image"].tolist() == [f"{test_dir}/t1.jpg", f"{test_dir}/t2.png"]
    assert comp.id_column == "Id" and comp.target_columns == ["Expected"]


def test_hidden_and_non_image_files(tmp_path):
    touch(tmp_path, "train/a/1.jpg", "train/b/2.jpg", "train/.hidden/3.jpg", "train/__MACOSX/a/._1.jpg",
          "train/a/.DS_Store", "test/x.jpg")
    write(tmp_path, "train/a/notes.txt", "hi")
    write(tmp_path, "train/b/Thumbs.db", "")
    sample(tmp_path, ["x"])
    comp = load_competition(tmp_path)
    assert comp.classes == ["a", "b"]
    assert len(comp.train) == 2
    assert comp.ignored == ["train/a/notes.txt", "train/b/Thumbs.db"]
    assert "2 classes, 2 train images, 1 test ids" in comp.describe()
    assert "a=1, b=1" in comp.describe()


def test_integer_classes_sort_numerically(tmp_path):
    touch(tmp_path, *[f"train/{c}/i.png" for c in ("10", "2", "1")], "test/t.png")
    sample(tmp_path, ["t.png"])
    assert load_competition(tmp_path).classes == ["1", "2", "10"]


def test_mixed_names_sort_like_imagefolder(tmp_path):
    touch(tmp_path, *[f"train/{c}/i.png" for c in ("b", "B", "10", "2")], "test/t.png")
    sample(tmp_path, ["t.png"])
    assert load_competition(tmp_path).classes == ["10", "2", "B", "b"]


@pytest.mark.parametrize("csv_name,header", [("train.csv", "id,label"), ("labels.csv", "id,breed"),
                                             ("trainLabels.csv", "image,level"),
                                             ("train_labels.csv", "image_id,label")])
def test_csv_layout_ids_without_extension(tmp_path, csv_name, header):
    touch(tmp_path, "train/aa.JPG", "train/bb.png", "train/cc.jpeg", "test_images/t1.jpg", "test_images/t2.jpg")
    write(tmp_path, csv_name, f"{header}\naa,2\nbb,10\ncc,2\n")
    sample(tmp_path, ["t1", "t2"], header="id,2,10")
    comp = load_competition(tmp_path)
    assert comp.train["image"].tolist() == ["train/aa.JPG", "train/bb.png", "train/cc.jpeg"]
    assert comp.train["label"].tolist() == ["2", "10", "2"]
    assert comp.classes == ["2", "10"]
    assert comp.test["image"].tolist() == ["test_images/t1.jpg", "test_images/t2.jpg"]
    assert comp.target_columns == ["2", "10"]


def test_csv_layout_ids_with_extension_and_images_dir(tmp_path):
    touch(tmp_path, "images/p.JPG", "images/q.png", "test/r.jpg")
    write(tmp_path, "train.csv", "filename,genre\np.jpg,rock\nq.png,jazz\n")
    sample(tmp_path, ["r.jpg"])
    comp = load_competition(tmp_path)
    assert comp.train["image"].tolist() == ["images/p.JPG", "images/q.png"]
    assert comp.classes == ["jazz", "rock"]


def test_csv_one_hot_labels(tmp_path):
    touch(tmp_path, "images/Train_0.jpg", "images/Train_1.jpg", "images/Test_0.jpg")
    write(tmp_path, "train.csv", "image_id,healthy,rust,scab\nTrain_0,0,1,0\nTrain_1,1,0,0\n")
    write(tmp_path, "competition.yaml", "test_dir: images\n")
    sample(tmp_path, ["Test_0"], header="image_id,healthy,rust,scab")
    comp = load_competition(tmp_path)
    assert comp.train["label"].tolist() == ["rust", "healthy"]


def test_test_ids_as_relative_path_and_stem(tmp_path):
    touch(tmp_path, "train/a/1.png", "train/b/2.png", "test/sub/x.png", "test/y.webp")
    sample(tmp_path, ["sub/x.png", "y"])
    assert load_competition(tmp_path).test["image"].tolist() == ["test/sub/x.png", "test/y.webp"]


def test_sample_id_exact_string_kept(tmp_path):
    touch(tmp_path, "train/a/1.png", "train/b/2.png", "test/007.png", "test/NA.png")
    sample(tmp_path, ["007", "NA"])
    comp = load_competition(tmp_path)
    assert comp.test["id"].tolist() == ["007", "NA"]
    assert comp.sample.iloc[1, 0] == "NA"


def test_missing_test_image_names_ids_and_folder(tmp_path):
    touch(tmp_path, "train/a/1.png", "train/b/2.png", "testset/t1.png")
    sample(tmp_path, ["t1.png", "t9.png"])
    with pytest.raises(CompetitionError, match=r"testset/.*t9\.png"):
        load_competition(tmp_path)


def test_missing_test_folder(tmp_path):
    touch(tmp_path, "train/a/1.png", "train/b/2.png")
    sample(tmp_path, ["t1.png"])
    with pytest.raises(CompetitionError, match="no test image folder.*test_dir"):
        load_competition(tmp_path)


def test_missing_sample_submission(tmp_path):
    touch(tmp_path, "train/a/1.png", "train/b/2.png", "test/t.png")
    with pytest.raises(CompetitionError, match="no sample submission found.*sample_submission"):
        load_competition(tmp_path)


def test_sample_submission_name_variants(tmp_path):
    touch(tmp_path, "train/a/1.png", "train/b/2.png", "test/t.png")
    sample(tmp_path, ["t"], name="sample_submission_stage1.csv")
    assert load_competition(tmp_path).sample_path.name == "sample_submission_stage1.csv"
    (tmp_path / "sample_submission_stage1.csv").rename(tmp_path / "SampleSubmission.csv")
    assert load_competition(tmp_path).sample_path.name == "SampleSubmission.csv"


def test_no_training_data(tmp_path):
    touch(tmp_path, "test/t.png")
    sample(tmp_path, ["t"])
    with pytest.raises(CompetitionError, match="no training data found"):
        load_competition(tmp_path)


def test_test_labels_are_named_in_competition_yaml_not_guessed(tmp_path):
    touch(tmp_path, "train/0/a.png", "train/1/b.png", "testset/img_0001.png")
    sample(tmp_path, ["img_0001.png"])
    write(tmp_path, "truth.csv", "Id,Expected\nimg_0001.png,1\n")
    assert load_competition(tmp_path).test_labels_path is None  # no file name is special
    write(tmp_path, "competition.yaml", "test_labels: truth.csv\n")
    comp = load_competition(tmp_path)
    assert comp.layout.startswith("folder per class")
    assert comp.test_labels_path == tmp_path / "truth.csv"
    assert len(comp.train) == 2
    write(tmp_path, "competition.yaml", "test_labels: nothing.csv\n")
    with pytest.raises(CompetitionError, match="competition.yaml: test_labels 'nothing.csv' is not a file"):
        load_competition(tmp_path)


def _base(tmp_path):
    touch(tmp_path, "train/a/1.png", "train/b/2.png", "train/c/3.png", "test/t.png")
    sample(tmp_path, ["t"])


def test_yaml_overrides_and_defaults(tmp_path):
    _base(tmp_path)
    comp = load_competition(tmp_path)
    assert comp.settings == CompetitionConfig()
    s = comp.settings
    assert (s.n_splits, s.fold_seed, s.dedup, s.dedup_distance, s.ood, s.ood_threshold, s.holdout,
            s.semantic_threshold, s.embeddings) == (5, 42, "auto", 4, "report", None, 0.0, None, True)
    assert comp.submission_format is None and comp.test_labels_path is None and comp.configured == set()
    write(tmp_path, "competition.yaml", "classes: [c, a, b]\nn_splits: 3\nsubmission_format: probs\n"
                                        "dedup: off\nood_threshold: 0.5\n")
    comp = load_competition(tmp_path)
    assert comp.classes == ["c", "a", "b"]
    assert comp.settings.n_splits == 3
    assert comp.settings.dedup == "off"  # regression: YAML reads a bare `off` as False
    assert comp.settings.ood_threshold == 0.5
    assert comp.submission_format == "probs"
    assert comp.configured == {"classes", "n_splits", "submission_format", "dedup", "ood_threshold"}


def test_every_competition_yaml_key_loads(tmp_path):
    """Each key users write keeps its meaning: every one set at once, read back as typed values."""
    touch(tmp_path, "pics/u.png", "pics/v.png", "pics/w.png", "tests/t.png")
    write(tmp_path, "meta.csv", "key,file,tag,batch\n1,u.png,cat,g1\n2,v.png,dog,g1\n3,w.png,dog,g2\n")
    sample(tmp_path, ["t"], name="sub.csv")
    write(tmp_path, "truth.csv", "Id,Expected\nt,cat\n")
    write(tmp_path, "competition.yaml", "\n".join([
        "train_dir: pics", "train_csv: meta.csv", "id_column: key", "label_column: tag", "image_column: file",
        "group_column: batch", "test_dir: tests", "sample_submission: sub.csv", "test_labels: truth.csv",
        "classes: [dog, cat]", "class_order: natural", "submission_format: label", "n_splits: 2",
        "fold_seed: 7", "dedup: off", "dedup_distance: 0", "ood: drop", "ood_threshold: 3", "holdout: 0.25",
        "semantic_threshold: 1", "embeddings: off", ""]))
    comp = load_competition(tmp_path)
    assert comp.configured == {f for f in CompetitionConfig.__dataclass_fields__}
    assert comp.classes == ["dog", "cat"] and comp.class_order.startswith("explicit")
    assert comp.train["image"].tolist() == ["pics/u.png", "pics/v.png", "pics/w.png"]
    assert comp.train["group"].tolist() == ["g1", "g1", "g2"]
    assert comp.test["image"].tolist() == ["tests/t.png"] and comp.sample_path == tmp_path / "sub.csv"
    assert comp.test_labels_path == tmp_path / "truth.csv" and comp.submission_format == "label"
    s = comp.settings
    assert (s.n_splits, s.fold_seed, s.dedup, s.dedup_distance, s.ood, s.ood_threshold, s.holdout,
            s.semantic_threshold, s.embeddings) == (2, 7, "off", 0, "drop", 3.0, 0.25, 1.0, False)


def test_integer_class_names_in_competition_yaml(tmp_path):
    touch(tmp_path, "train/0/a.png", "train/1/b.png", "test/t.png")
    sample(tmp_path, ["t"])
    write(tmp_path, "competition.yaml", "classes: [1, 0]\n")
    assert load_competition(tmp_path).classes == ["1", "0"]


@pytest.mark.parametrize("text,pattern", [
    # an unknown key: the valid keys are listed
    ("n_split: 3\n", r"competition\.yaml: unknown key 'n_split' \(known keys: .*n_splits"),
    # a wrong type: the key and the expected type (the fold configs' machinery)
    ("n_splits: three\n", "competition.yaml: key 'n_splits': expected int, got 'three'"),
    ("n_splits: true\n", "key 'n_splits': expected int, got True"),
    ("semantic_threshold: true\n", "key 'semantic_threshold': expected float or null, got True"),
    ("ood_threshold: high\n", "key 'ood_threshold': expected float or null, got 'high'"),
    ("embeddings: no_thanks\n", "key 'embeddings': expected bool, got 'no_thanks'"),
    ("group_column: 3\n", "key 'group_column': expected str, got 3"),
    ("train_dir: null\n", "key 'train_dir': expected str, got None"),
    ("classes: a\n", "key 'classes': expected a list of str or null, got 'a'"),
    ("classes: [a, 1.5]\n", r"key 'classes': expected a list of str or null, got \['a', 1.5\]"),
    # a bad value: what it must be
    ("n_splits: 1\n", "key 'n_splits' must be an integer >= 2, got 1"),
    ("dedup_distance: -1\n", "key 'dedup_distance' must be an integer >= 0"),
    ("dedup: maybe\n", "'dedup' must be one of auto, group, semantic"),
    ("semantic_threshold: 1.5\n", "'semantic_threshold' must be a cosine similarity in \\(0, 1\\]"),
    ("group_column: ''\n", r"'group_column' must be a string \(a path or column name\), got ''"),
    ("submission_format: csv\n", "'submission_format' must be one of"),
    ("classes: [a, b]\n", r"missing \['c'\]"),
    ("classes: [a, b, c, d]\n", r"unknown \['d'\]"),
    ("- a\n- b\n", "expected `key: value`"),
    ("n_splits: [2\n", "not valid YAML"),
    ("test_dir: nowhere\n", "test_dir 'nowhere' is not a folder"),
    ("holdout: 1.5\n", "'holdout' must be a fraction in \\[0, 0.5\\]"),
    ("class_order: alphabetical\n", "'class_order' must be one of lexical, natural"),
    ("class_order: null\n", "key 'class_order': expected str, got None"),
    ("ood: remove\n", "'ood' must be one of report, drop"),
])
def test_yaml_errors_name_key_and_file(tmp_path, text, pattern):
    _base(tmp_path)
    write(tmp_path, "competition.yaml", text)
    with pytest.raises(CompetitionError, match=pattern) as err:
        load_competition(tmp_path)
    assert "competition.yaml" in str(err.value)
    assert "\n" not in str(err.value)  # one line


def test_yaml_train_csv_with_custom_columns(tmp_path):
    touch(tmp_path, "pics/train/u.png", "pics/train/v.png", "pics/test/w.png")
    write(tmp_path, "meta.csv", "key,file,tag\n1,train/u.png,cat\n2,train/v.png,dog\n")
    write(tmp_path, "competition.yaml", "train_csv: meta.csv\nimage_column: file\nlabel_column: tag\n"
                                        "train_dir: pics\ntest_dir: pics/test\n")
    sample(tmp_path, ["w"])
    comp = load_competition(tmp_path)
    assert comp.train["image"].tolist() == ["pics/train/u.png", "pics/train/v.png"]
    assert comp.classes == ["cat", "dog"]


def test_csv_missing_train_image_is_an_error(tmp_path):
    touch(tmp_path, "train/aa.png", "test/t.png")
    write(tmp_path, "train.csv", "id,label\naa,x\nzz,y\n")
    sample(tmp_path, ["t"])
    with pytest.raises(CompetitionError, match=r"train/.*'zz'"):
        load_competition(tmp_path)


def test_csv_empty_label_is_an_error(tmp_path):
    touch(tmp_path, "train/aa.png", "train/bb.png", "test/t.png")
    write(tmp_path, "train.csv", "id,label\naa,x\nbb,\n")
    sample(tmp_path, ["t"])
    with pytest.raises(CompetitionError, match=r"train\.csv: empty label on line\(s\) \[3\]"):
        load_competition(tmp_path)


def test_folder_named_like_latest_is_not_a_test_folder(tmp_path):
    touch(tmp_path, "latest/a/1.png", "latest/b/2.png", "test/t.png")
    sample(tmp_path, ["t"])
    comp = load_competition(tmp_path)
    assert comp.layout == "folder per class: latest/<class>/; test: test/"


def test_an_id_matching_two_files_is_an_error_naming_both(tmp_path):
    from PIL import Image

    inp = tmp_path / "input"
    for c in ("a", "b"):
        (inp / "train" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(inp / "train" / c / f"{i}.png")
    (inp / "test").mkdir()
    Image.new("RGB", (8, 8)).save(inp / "test" / "x.png")
    Image.new("RGB", (8, 8)).save(inp / "test" / "x.jpg")
    (inp / "sample_submission.csv").write_text("id,label\nx,a\n")
    with pytest.raises(CompetitionError, match="x.jpg, test/x.png"):
        load_competition(inp)


def test_an_exact_relative_path_is_never_ambiguous(tmp_path):
    from PIL import Image

    from foldblend.data.files import FileIndex

    (tmp_path / "imgs" / "extra").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "extra" / "a.png")
    index = FileIndex(tmp_path / "imgs", tmp_path, "train")
    assert index.find("a.png") == "imgs/a.png" and index.find("extra/a.png") == "imgs/extra/a.png"
    with pytest.raises(CompetitionError, match="train id 'a' matches several files"):
        index.find("a")


# ----------------------------------------------------------------------------- train-only competitions

@pytest.mark.parametrize("layout,where", [
    (("train/a/1.png", "train/b/2.png"), "train/<class>/"),
    (("training/L2_2/1.png", "training/L2_10/2.png"), "training/<class>/"),
    (("album_covers/rock/1.jpg", "album_covers/jazz/2.jpg"), "album_covers/<class>/"),
    (("data/covers/rock/1.jpg", "data/covers/jazz/2.jpg"), "data/covers/<class>/"),
    (("rock/1.jpg", "jazz/2.jpg", "jazz/sub/3.jpg"), "./<class>/"),
])
def test_a_labelled_folder_without_sample_or_test_is_a_train_only_competition(tmp_path, layout, where):
    touch(tmp_path, *layout)
    comp = load_competition(tmp_path)
    assert not comp.has_test and comp.sample is None and comp.sample_path is None
    assert len(comp.test) == 0 and list(comp.test.columns) == ["id", "image"]
    assert len(comp.train) == len(layout) and comp.layout.startswith(f"folder per class: {where}")
    assert "no test set" in comp.layout and "no test set" in comp.describe()


def test_train_only_with_a_labelled_test_folder_points_to_evaluate(tmp_path):
    touch(tmp_path, "train/a/1.png", "train/b/2.png", "test/a/3.png", "test/b/4.png", "valid/a/5.png", "valid/b/6.png")
    comp = load_competition(tmp_path)
    assert sorted(comp.train["image"]) == ["train/a/1.png", "train/b/2.png"] and not comp.has_test
    assert "test/ is a labelled folder" in comp.layout and "foldblend evaluate --data" in comp.layout


def test_unlabelled_test_folder_without_sample_names_both_fixes(tmp_path):
    touch(tmp_path, "train/a/1.png", "train/b/2.png", "testset/t.png")
    with pytest.raises(CompetitionError, match=r"testset/ holds unlabelled test images.*sample_submission.*train-only"):
        load_competition(tmp_path)
    write(tmp_path, "competition.yaml", "test_dir: testset\n")
    with pytest.raises(CompetitionError, match="test_dir is set but no sample submission"):
        load_competition(tmp_path)


def test_class_order_lexical_natural_and_explicit(tmp_path):
    names = ["L2_10", "L2_2", "L2_52", "L2_3"]
    touch(tmp_path, *[f"training/{n}/x.png" for n in names])
    assert load_competition(tmp_path).classes == ["L2_10", "L2_2", "L2_3", "L2_52"]  # ImageFolder's order
    write(tmp_path, "competition.yaml", "class_order: natural\n")
    comp = load_competition(tmp_path)
    assert comp.classes == ["L2_2", "L2_3", "L2_10", "L2_52"] and comp.class_order == "natural"
    write(tmp_path, "competition.yaml", "class_order: natural\nclasses: [L2_52, L2_10, L2_3, L2_2]\n")
    assert load_competition(tmp_path).classes == ["L2_52", "L2_10", "L2_3", "L2_2"]  # the explicit list wins


def test_integer_class_names_sort_numerically_unless_lexical(tmp_path):
    touch(tmp_path, "train/10/a.png", "train/2/b.png", "train/1/c.png")
    assert load_competition(tmp_path).classes == ["1", "2", "10"]
    write(tmp_path, "competition.yaml", "class_order: lexical\n")
    assert load_competition(tmp_path).classes == ["1", "10", "2"]


def test_class_table_shows_every_index():
    from foldblend.data.classes import class_table

    text = class_table([f"L2_{i}" for i in range(2, 53)][:20])
    assert " 0 L2_2" in text and "19 L2_21" in text and len(text.splitlines()) > 1
