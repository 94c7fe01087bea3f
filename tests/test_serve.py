"""The web app's model: predictions identical to `foldblend predict`, member breakdown, model card,
similar images from the feature index, the page's HTML, and its HTTP API (Gradio, in-process)."""
import io
import json
import socket
import urllib.request
import zipfile
from pathlib import Path

import imagegen as gen
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import f1_score
from test_predict import CLASSES, make_blend, make_experiment, make_labelled_folder

from foldblend.data.read import ImageReadError
from foldblend.ensemble import methods as E
from foldblend.ensemble.fitted import FittedBlend
from foldblend.inference import predictor as predictor_module
from foldblend.inference import similar as neighbours
from foldblend.inference.load import load_predictor
from foldblend.inference.predictor import Predictor, predict_images, top_k_table
from foldblend.paths import Project
from foldblend.serve import model as served_module
from foldblend.serve.app import classify_uploads, upload_folder_for
from foldblend.serve.model import classify, load_served
from foldblend.serve.page import card_html, results_html
from foldblend.serve.uploads import UploadLimits


@pytest.fixture()
def project(tmp_path):
    p = Project.at(tmp_path / "project")
    make_experiment(p, "exp_a", folds=2, img_size=16, tta=("identity", "hflip"), seed=0)
    make_experiment(p, "exp_b", folds=1, img_size=12, tta=("identity",), seed=1)
    make_blend(p, {"exp_a": 0.7, "exp_b": 0.3}, biases=[0.0, 0.4, -0.2])
    return p


@pytest.fixture()
def images(tmp_path):
    paths = make_labelled_folder(tmp_path / "uploads", per_class=2)
    broken = tmp_path / "uploads" / "broken.png"
    broken.write_bytes(paths[0].read_bytes()[:50])
    return paths[:4] + [broken] + paths[4:]


def test_classify_gives_predicts_top_k_and_each_members_view(project, images):
    served = load_served(project, "blend")
    names = [f"upload_{i}.png" for i in range(len(images))]
    result = classify(served, images, names, top_k=2, progress=False)

    # exactly what `foldblend predict` computes for the same files
    predictor = load_predictor(project, "blend")
    expected = top_k_table(predict_images(predictor, images, progress=False), names, 2)
    assert [i["file"] for i in result["images"]] == expected["id"].tolist() == [n for n in names if n != "upload_4.png"]
    assert [i["predicted"] for i in result["images"]] == expected["predicted"].tolist()
    assert [[t["prob"] for t in i["top_k"]] for i in result["images"]] == expected[["prob_1", "prob_2"]].values.tolist()
    assert result["errors"] and result["errors"][0].startswith("upload_4.png: ")  # the person's name, not a path
    assert str(images[4]) not in result["errors"][0]

    # each member alone, by a separate path (a one-member predictor): its probabilities as shown
    readable = [p for p in images if p.name != "broken.png"]
    alone = {}
    for name in ("exp_a", "exp_b"):
        single = Predictor(name, CLASSES, {name: predictor.members[name]}, FittedBlend.unfitted([name]))
        alone[name] = predict_images(single, readable, progress=False).probs
    for row, image in enumerate(result["images"]):
        shown = {m["member"]: m for m in image["members"]}
        assert set(shown) == {"exp_a", "exp_b"} and shown["exp_a"]["weight"] == 0.7
        top = CLASSES.index(image["predicted"])
        for name, probs in alone.items():
            assert shown[name]["predicted"] == CLASSES[int(probs[row].argmax())]
            assert shown[name]["prob"] == pytest.approx(probs[row].max(), abs=1e-6)
            assert shown[name]["prob_of_predicted"] == pytest.approx(probs[row, top], abs=1e-6)
    # and the members combine into the blend as it was fitted: weights, then decision biases
    stacked = np.stack([alone["exp_a"], alone["exp_b"]])
    combined = E.apply_biases(E.mean_probs(stacked, np.array([0.7, 0.3])), np.array([0.0, 0.4, -0.2]))
    assert [CLASSES[j] for j in combined.argmax(1)] == [i["predicted"] for i in result["images"]]
    json.dumps(result)  # the API returns it as it is


def _write_blend_oof(project, labels, probs):
    np.savez(project.oof / "_blend" / "blend.npz", ids=np.array([f"train/x/{i}.png" for i in range(len(labels))]),
             labels=labels, test_ids=np.array(["t0"]), oof_probs=probs, test_probs=np.full((1, 3), 1 / 3),
             classes=np.array(CLASSES))
    pd.DataFrame({"image": [f"train/{CLASSES[c]}/{i}.png" for i, c in enumerate(labels)],
                  "label": [CLASSES[c] for c in labels], "group": range(len(labels)),
                  "fold": np.arange(len(labels)) % 2}).to_csv(project.folds_csv, index=False)


def test_model_card_shows_the_nested_cv_and_per_class_oof_f1(project):
    rng = np.random.default_rng(0)
    labels = np.array([0] * 10 + [1] * 6 + [2] * 4)
    probs = rng.dirichlet(np.ones(3), len(labels))
    probs[np.arange(12), labels[:12]] += 1.0  # right on the first 12, noise on the rest
    project.folds_dir.mkdir(parents=True)
    _write_blend_oof(project, labels, probs / probs.sum(1, keepdims=True))
    card = load_served(project, "blend").card
    assert card.headline == "blend (greedy): nested CV macro-F1 0.4000"
    table = card.per_class.set_index("class")
    expected = f1_score(labels, probs.argmax(1), average=None)
    np.testing.assert_allclose(table["F1"].to_numpy(), expected)
    assert table["train images"].tolist() == [10, 6, 4] and table["OOF images"].tolist() == [10, 6, 4]
    page = card_html(card, None)
    assert "nested CV" in page and "in-sample" in page and "no similar training images" in page
    assert all(c in page for c in CLASSES)


def test_weights_from_elsewhere_have_no_cv_but_still_serve(project, tmp_path):
    served = load_served(project, str(project.models / "exp_a"))
    assert served.card.scores == {} and "no CV" in served.card.headline
    result = classify(served, make_labelled_folder(tmp_path / "more", per_class=1), ["x", "y", "z"], progress=False)
    assert len(result["images"]) == 3 and [m["member"] for m in result["images"][0]["members"]] == [served.exp]


def test_a_bundle_serves_with_the_scores_it_was_exported_with(project, images):
    from foldblend.inference.bundle import export_bundle

    bundle = export_bundle(project, "blend", project.root / "export" / "blend")
    served = load_served(project, str(bundle))
    assert served.card.headline == "blend (bundle of blend) (greedy): nested CV (at export) macro-F1 0.4000"
    assert served.card.biases and set(served.predictor.members) == {"exp_a", "exp_b"}
    readable = [p for p in images if p.name != "broken.png"]
    names = [p.name for p in readable]
    from_bundle = classify(served, readable, names, progress=False)
    from_project = classify(load_served(project, "blend"), readable, names, progress=False)
    assert [i["predicted"] for i in from_bundle["images"]] == [i["predicted"] for i in from_project["images"]]


def test_the_blends_holdout_score_is_shown_beside_its_cv(project):
    blend_json = project.oof / "_blend" / "blend.json"
    blend = json.loads(blend_json.read_text())
    blend["holdout"] = {"n_images": 12, "blend": {"macro_f1": 0.35, "accuracy": 0.5},
                        "members": {"exp_a": {"macro_f1": 0.3}, "exp_b": {"macro_f1": 0.2}}}
    blend_json.write_text(json.dumps(blend))
    card = load_served(project, "blend").card
    assert card.scores["holdout (12 images)"]["macro_f1"] == 0.35
    assert [m["holdout macro_f1"] for m in card.members] == [0.3, 0.2]
    assert "holdout (12 images)" in card_html(card, None)


def _mean_colour(images: np.ndarray) -> np.ndarray:
    """A test-only "backbone": the mean colour, enough to tell generated colour classes apart."""
    return images.reshape(len(images), -1, 3).mean(1) + 1.0


def test_similar_training_images_come_from_the_feature_index(project, monkeypatch, tmp_path):
    colours = {"circle": (220, 30, 30), "square": (30, 200, 40), "stripes": (40, 60, 220)}
    ids, labels = [], []
    for name, colour in colours.items():
        for i in range(3):
            img = np.full((20, 20, 3), colour, np.uint8) + np.uint8(i * 5)
            gen.save(project.input / "train" / name / f"{i}.png", img)
            ids.append(f"train/{name}/{i}.png")
            labels.append(name)
    index = neighbours.FeatureIndex("mean colour", 8, _mean_colour, np.array(ids), np.array(labels),
                                    _mean_colour(np.stack([np.full((8, 8, 3), colours[n], np.uint8) for n in labels])))
    monkeypatch.setattr(served_module, "find_feature_index", lambda p: index)
    served = load_served(project, "blend")
    assert served.features is index
    upload = gen.save(tmp_path / "green.png", np.full((30, 30, 3), (35, 190, 45), np.uint8))
    result = classify(served, [upload], ["green.png"], progress=False)
    similar = result["images"][0]["similar"]
    assert len(similar) == 5
    assert [s["label"] for s in similar[:3]] == ["square"] * 3 and similar[0]["similarity"] > 0.99
    page = results_html(result, {"green.png": upload}, project)
    assert page.count('<figure title="train/') == 5 and page.count('src="data:image/png;base64,') == 1 + 5
    assert "mean colour features" in card_html(served.card, index.name)


def test_no_features_no_similar_panel(project, tmp_path):
    served = load_served(project, "blend")
    assert served.features is None
    result = classify(served, make_labelled_folder(tmp_path / "u", per_class=1), ["a", "b", "c"], progress=False)
    assert all("similar" not in i for i in result["images"])
    assert "fb-similar" not in results_html(result, {}, project)


def test_results_html_escapes_names_and_marks_cards_for_scripts(tmp_path):
    upload = gen.save(tmp_path / "x.png", gen.shapes(0, 20))
    name = '<img src=x onerror=alert(1)>.png'
    result = {"model": "blend", "images": [{"file": name, "predicted": "a&b", "top_k": [{"class": "a&b", "prob": 0.75}],
                                            "members": []}], "errors": ["notes.txt: not an image file"]}
    page = results_html(result, {name: upload})
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;.png" in page
    assert 'data-predicted="a&amp;b"' in page and 'class="fb-error">notes.txt: not an image file<' in page
    assert "0.750" in page and page.count('class="fb-card"') == 1


def test_uploads_never_go_into_the_project(project, monkeypatch, tmp_path):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(project.root / "tmp"))
    with pytest.raises(ValueError, match="inside the project"):
        upload_folder_for(project)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "elsewhere"))
    assert upload_folder_for(project) == ((tmp_path / "elsewhere").resolve(), False)
    monkeypatch.delenv("GRADIO_TEMP_DIR")
    folder, ours = upload_folder_for(project)
    assert ours and folder.is_dir() and not folder.is_relative_to(project.root)
    folder.rmdir()


def test_pixel_bombs_are_refused_from_their_headers_and_a_request_decodes_a_bounded_number_of_pixels(
        project, images, tmp_path, monkeypatch):
    """A 6 kB PNG declaring 7000x7000 pixels (just under the per-image guard) decodes to ~0.6 GB: a zip of
    them may only cost what the request's pixel budget allows; the rest are refused, one line each, from
    their headers, never decoded, and the ordinary images in the same zip are classified."""
    bomb = io.BytesIO()
    Image.new("1", (7000, 7000)).save(bomb, "PNG")
    archive = tmp_path / "bombs.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(8):  # 392 megapixels declared in all
            z.writestr(f"bombs/huge_{i}.png", bomb.getvalue())
        for i in range(2):
            z.writestr(f"bombs/ok_{i}.png", images[i].read_bytes())
    assert archive.stat().st_size < 20_000

    decoded = {}  # the decoder's calls: file -> the pixels its header declares
    real_load = predictor_module.load_rgb

    def load_rgb(path, **kwargs):
        with Image.open(path) as im:
            w, h = im.size
        decoded[Path(path).name] = w * h
        if w * h > 1_000_000:  # what it would cost is counted; a test machine does not pay it
            raise ImageReadError(f"{path}: not decoded in this test")
        return real_load(path, **kwargs)

    monkeypatch.setattr(predictor_module, "load_rgb", load_rgb)
    (tmp_path / "gradio").mkdir()
    result, _ = classify_uploads(load_served(project, "blend"), [str(archive)], None, 3, tmp_path / "gradio",
                                 UploadLimits(), html=False)

    assert sum(decoded.values()) <= 300_000_000, "a request decodes a few hundred megapixels at most"
    accepted = UploadLimits().max_pixels // 49_000_000
    assert 1 <= accepted < 8 and sum(n > 1_000_000 for n in decoded.values()) == accepted
    refused = [e for e in result["errors"] if "--max-megapixels" in e]
    assert len(refused) == 8 - accepted and len(decoded) == accepted + 2  # the refused ones were never decoded
    assert refused[0].startswith(f"bombs.zip/bombs/huge_{accepted}.png: left out, 7000x7000 is 49 megapixels "
                                 "and this request has")
    assert [i["file"] for i in result["images"]] == ["bombs.zip/bombs/ok_0.png", "bombs.zip/bombs/ok_1.png"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _files(root):
    return {p.relative_to(root): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.mark.slow
def test_http_api_returns_what_predict_computes(project, images, tmp_path, monkeypatch):
    """The documented `gradio_client` call and the documented curl steps, against a real server."""
    pytest.importorskip("gradio", reason="the serve extra (gradio) is not installed")
    from gradio_client import Client, handle_file

    from foldblend.serve.app import serve

    uploads = tmp_path / "gradio_uploads"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    monkeypatch.chdir(project.root)  # nothing Gradio writes may land in the project
    before = _files(project.root)
    port = free_port()
    app = serve(project, "blend", port=port, block=False)
    try:
        url = f"http://127.0.0.1:{port}/"
        chosen = [images[0], images[5], images[4]]  # two images and a broken one
        got = Client(url, verbose=False).predict(files=[handle_file(str(p)) for p in chosen], pasted=None, top_k=3,
                                                 api_name="/classify")
        expected = top_k_table(predict_images(load_predictor(project, "blend"), chosen, progress=False),
                               [p.name for p in chosen], 3)
        assert [i["file"] for i in got["images"]] == expected["id"].tolist()
        assert [i["predicted"] for i in got["images"]] == expected["predicted"].tolist()
        assert got["errors"][0].startswith("broken.png: ")

        # curl's three steps: upload, call, read the event stream
        boundary = "foldblendboundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{images[1].name}\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + images[1].read_bytes()
        body += f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(url + "gradio_api/upload", body,
                                         {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        server_path = json.load(urllib.request.urlopen(request, timeout=60))[0]
        call = urllib.request.Request(url + "gradio_api/call/classify", json.dumps(
            {"data": [[{"path": server_path, "meta": {"_type": "gradio.FileData"}}], None, 3]}).encode(),
            {"Content-Type": "application/json"})
        event = json.load(urllib.request.urlopen(call, timeout=60))["event_id"]
        stream = urllib.request.urlopen(url + f"gradio_api/call/classify/{event}", timeout=120).read().decode()
        data = [line[len("data: "):] for line in stream.splitlines() if line.startswith("data: ")][-1]
        (result,) = json.loads(data)
        alone = top_k_table(predict_images(load_predictor(project, "blend"), [images[1]], progress=False),
                            [images[1].name], 3)
        assert [i["predicted"] for i in result["images"]] == alone["predicted"].tolist()
        assert list(uploads.rglob(images[0].name)), "uploads are kept in GRADIO_TEMP_DIR, outside the project"
    finally:
        app.close()
    assert _files(project.root) == before
