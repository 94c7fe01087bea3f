"""What the web app accepts: images, zips of folders; everything else is one line naming the file."""
import zipfile

import imagegen as gen
import pytest

from foldblend.serve.uploads import UploadLimits, gather_uploads


@pytest.fixture()
def files(tmp_path):
    up = tmp_path / "uploads"
    up.mkdir()
    return {
        "a": gen.save(up / "a.png", gen.shapes(1, 32)),
        "b": gen.save(up / "B photo.JPG", gen.photo(2, 32), "JPEG"),
        "text": (up / "notes.txt"),
        "work": tmp_path / "work",
        "root": tmp_path,
    }


def _zip(path, entries: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


def test_images_pass_in_upload_order_and_a_text_file_is_named(files):
    files["text"].write_text("not an image")
    files["work"].mkdir()
    got = gather_uploads([files["b"], files["text"], files["a"]], files["work"])
    assert got.names == ["B photo.JPG", "a.png"] and got.paths == [files["b"], files["a"]]
    assert len(got.problems) == 1 and got.problems[0].startswith("notes.txt: not an image file")


def test_a_zip_of_a_folder_unpacks_its_images_sorted_and_skips_the_rest(files):
    png = gen.encode(gen.shapes(3, 24))
    archive = _zip(files["root"] / "folder.zip", {
        "folder/cats/z.png": png, "folder/cats/a.png": png, "folder/readme.md": b"# hi",
        "__MACOSX/folder/._a.png": b"junk", "folder/.DS_Store": b"\0\1", "folder/empty/": b""})
    files["work"].mkdir()
    got = gather_uploads([archive], files["work"])
    assert got.names == ["folder.zip/folder/cats/a.png", "folder.zip/folder/cats/z.png"]
    assert all(p.read_bytes() == png and p.is_relative_to(files["work"]) for p in got.paths)
    assert got.problems == ["folder.zip: ignored 1 file(s) that are not images (folder/readme.md)"]


def test_zip_member_names_never_choose_where_files_land(files):
    """A `../` name in an archive (zip slip) is copied under a name of our own inside the work folder."""
    archive = _zip(files["root"] / "evil.zip", {"../../escaped.png": gen.encode(gen.shapes(4, 16))})
    files["work"].mkdir()
    got = gather_uploads([archive], files["work"])
    assert got.names == ["evil.zip/../../escaped.png"] and got.paths[0].is_relative_to(files["work"])
    assert not list(files["root"].parent.glob("escaped.png")) and not list(files["root"].glob("escaped.png"))


def test_bad_and_empty_zips_and_oversized_files_are_refused_with_a_reason(files):
    (files["root"] / "bad.zip").write_bytes(b"PK\3\4 this is not really a zip")
    empty = _zip(files["root"] / "empty.zip", {"docs/readme.txt": b"nothing"})
    big = gen.save(files["root"] / "big.png", gen.photo(5, 200))
    files["work"].mkdir()
    got = gather_uploads([files["root"] / "bad.zip", empty, big, files["a"]], files["work"],
                         UploadLimits(max_bytes=big.stat().st_size - 1))
    assert got.names == ["a.png"]
    bad, ignored, no_images, too_big = got.problems
    assert bad.startswith("bad.zip: not a readable zip archive")
    assert ignored.startswith("empty.zip: ignored 1") and no_images.startswith("empty.zip: no image files inside")
    assert too_big.startswith("big.png: ") and "over the" in too_big and "--max-upload-mb" in too_big


def test_a_zip_bomb_stops_at_the_limit_while_copying(files):
    """The header's sizes are not trusted: copying stops once the limit is passed."""
    archive = _zip(files["root"] / "bomb.zip",
                   {"a_ok.png": gen.encode(gen.shapes(6, 16)), "huge.png": b"\0" * 3_000_000})
    assert archive.stat().st_size < 20_000
    files["work"].mkdir()
    got = gather_uploads([archive], files["work"], UploadLimits(max_bytes=1_000_000))
    assert got.names == ["bomb.zip/a_ok.png"]
    assert got.problems == ["bomb.zip: its images unpack to more than 0.953674 MB; upload a smaller archive "
                            "(or raise --max-upload-mb)"]
    assert sum(p.stat().st_size for p in files["work"].rglob("*") if p.is_file()) < 1_000_000


def test_at_most_max_images_per_request(files):
    png = gen.encode(gen.shapes(7, 16))
    archive = _zip(files["root"] / "many.zip", {f"img_{i}.png": png for i in range(5)})
    files["work"].mkdir()
    got = gather_uploads([files["a"], archive, files["b"]], files["work"], UploadLimits(max_images=3))
    assert got.names == ["a.png", "many.zip/img_0.png", "many.zip/img_1.png"]
    assert "only the first 3 images" in got.problems[0] and "(3 left out)" in got.problems[0]
    assert got.problems[1].startswith("B photo.JPG: left out, only 3 images")


def test_pixels_are_budgeted_per_request_from_the_headers(files):
    """Images (files and zip members alike) pass while the pixels their headers declare fit what is left;
    the others are one line each, and a refused zip member is not kept on disk."""
    png = gen.encode(gen.shapes(8, 32))  # 1024 pixels
    archive = _zip(files["root"] / "more.zip", {"x.png": png, "y.png": png, "z.png": gen.encode(gen.shapes(9, 16))})
    files["work"].mkdir()
    got = gather_uploads([files["a"], archive, files["b"]], files["work"], UploadLimits(max_pixels=2500))
    assert got.names == ["a.png", "more.zip/x.png", "more.zip/z.png"] and got.pixels == 1024 * 2 + 256
    assert got.problems == [
        "more.zip/y.png: left out, 32x32 is 0.00102 megapixels and this request has 0.000452 of its 0.0025 "
        "megapixels left to decode; send it in another request (or raise --max-megapixels)",
        "B photo.JPG: left out, 32x32 is 0.00102 megapixels and this request has 0.000196 of its 0.0025 "
        "megapixels left to decode; send it in another request (or raise --max-megapixels)"]
    assert len([p for p in files["work"].rglob("*") if p.is_file()]) == 2
