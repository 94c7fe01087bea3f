from __future__ import annotations

import imagegen as gen
import numpy as np
import pytest

from foldblend.data.read import IMAGE_EXTENSIONS, ImageReadError, check_image, decode_rgb, is_image_name, load_rgb


def _close(a, b, tol=12.0):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.abs(a.astype(float) - b.astype(float)).mean() < tol


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".webp", ".jpg", ".PNG", ".JPEG", ".Tiff"])
def test_formats_and_uppercase_extensions_decode_to_rgb_uint8(tmp_path, suffix):
    img = gen.shapes(1, 32)[:, :24]  # non-square, to catch swapped axes
    kw = {"quality": 95} if suffix.lower() in (".jpg", ".jpeg") else ({"lossless": True} if suffix == ".webp" else {})
    p = gen.save(tmp_path / f"a{suffix}", img, **kw)
    assert is_image_name(p)
    out = load_rgb(p)
    assert out.dtype == np.uint8 and out.shape == (32, 24, 3) and out.flags.c_contiguous
    _close(out, img, tol=12.0 if "quality" in kw else 0.5)  # JPEG is lossy; the rest exact


def test_non_ascii_names(tmp_path):
    img = gen.shapes(2, 20)
    p = gen.save(tmp_path / "ünïcødé 画像" / "猫 café.JPG", img, quality=95)
    _close(load_rgb(p), img)
    assert check_image(p).ok


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    img = gen.shapes(3, 32)
    out = load_rgb(gen.cmyk_jpeg(tmp_path / "cmyk.jpg", img))
    assert out.shape == (32, 32, 3)
    _close(out, img, tol=20.0)
    assert check_image(tmp_path / "cmyk.jpg").mode == "CMYK"


def test_exif_orientation_is_applied(tmp_path):
    img = np.zeros((16, 40, 3), np.uint8)
    img[:, :20] = (255, 0, 0)  # red left half
    p = gen.exif_rotated_jpeg(tmp_path / "rot.jpg", img, orientation=6)  # 6 = rotate 90 clockwise to display
    out = load_rgb(p)
    assert out.shape == (40, 16, 3)
    assert out[:20, :, 0].mean() > 200 and out[20:, :, 0].mean() < 60  # red is now on top
    c = check_image(p)
    assert (c.width, c.height) == (16, 40)  # reported as displayed


def test_palette_rgba_and_16bit_png(tmp_path):
    img = gen.shapes(4, 32)
    _close(load_rgb(gen.palette_png(tmp_path / "p.png", img)), img, tol=8.0)
    out = load_rgb(gen.rgba_png(tmp_path / "rgba.png", img, alpha=0))
    assert (out[:, :16] == 255).all()  # transparent half composited on white
    assert (out[:, 16:] == img[:, 16:]).all()
    values = np.tile(np.linspace(0, 65535, 16), (8, 1))
    g16 = load_rgb(gen.gray16_png(tmp_path / "g16.png", values))
    assert g16.shape == (8, 16, 3) and g16[0, 0, 0] == 0 and g16[0, -1, 0] == 255
    assert (g16[..., 0] == g16[..., 2]).all()
    dark = load_rgb(gen.gray16_png(tmp_path / "dark.png", np.full((4, 4), 200)))
    assert dark.max() <= 1  # 200/65535 is nearly black: a fixed scale, not stretched per image


def test_grayscale_and_gif_become_three_channels(tmp_path):
    gray = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
    from PIL import Image
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = load_rgb(tmp_path / "g.png")
    assert out.shape == (8, 8, 3) and (out[..., 0] == gray).all()
    gen.save(tmp_path / "a.gif", gen.shapes(5, 16))
    assert load_rgb(tmp_path / "a.gif").shape == (16, 16, 3)


def test_broken_and_junk_files_raise_named_errors_and_check_not_ok(tmp_path):
    junk = gen.junk_files(tmp_path) + [gen.truncated(tmp_path / "half.jpg", gen.photo(1, 64))]
    for p in junk:
        with pytest.raises(ImageReadError) as e:
            load_rgb(p)
        assert p.name in str(e.value)
        c = check_image(p)
        assert not c.ok and p.name in c.why and c.why
    assert "empty" in check_image(tmp_path / "empty.jpg").why
    assert not check_image(tmp_path / "does_not_exist.png").ok
    assert not is_image_name(tmp_path / "notes.txt") and not is_image_name(".DS_Store")
    assert ".jpg" in IMAGE_EXTENSIONS


def test_tiny_and_huge_images_are_not_ok(tmp_path):
    p = gen.save(tmp_path / "pixel.png", np.zeros((1, 1, 3), np.uint8))
    assert load_rgb(p).shape == (1, 1, 3)  # decodable, but not useful
    c = check_image(p)
    assert not c.ok and "minimum side" in c.why
    assert check_image(gen.save(tmp_path / "two.png", np.zeros((2, 2, 3), np.uint8))).ok
    # Headers claiming 56 MP (over our limit) and 10 gigapixels (over Pillow's own bomb guard): no allocation.
    for w, h in [(8000, 7000), (100_000, 100_000)]:
        (tmp_path / f"bomb{w}.png").write_bytes(gen.png_header(w, h))
        c = check_image(tmp_path / f"bomb{w}.png")
        assert not c.ok and "decompression-bomb" in c.why
        with pytest.raises(ImageReadError):
            load_rgb(tmp_path / f"bomb{w}.png")
    assert not check_image(gen.save(tmp_path / "big.png", np.zeros((40, 40, 3), np.uint8)), max_pixels=1000).ok


def test_decode_rgb_from_bytes_and_draft():
    img = gen.photo(7, 256)
    data = gen.encode(img, "JPEG", quality=95)
    assert decode_rgb(data, "x.jpg").shape == (256, 256, 3)
    small = decode_rgb(data, "x.jpg", draft_size=64)
    assert small.shape == (64, 64, 3)  # JPEG DCT scaling: 1/4 of the work, still >= 64 a side
    with pytest.raises(ImageReadError, match="x.bin"):
        decode_rgb(b"\x00" * 10, "x.bin")
