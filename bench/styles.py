"""A generated competition that is not the digits: shape and glyph families drawn in several styles.

Ten classes of drawn shapes (disc, square, triangle, star, cross, ring, arrow, hexagon, crescent,
heart) and six of glyphs (A, G, K, R, 5, 7 in four Hershey fonts at random stroke weights:
`GLYPH_CLASSES`), each image at a random size (28-120 px), position, rotation and scale, in one of five styles:
`flat` (one flat colour on plain paper), `outline` (a thick contour), `textured` (striped or dotted
fill on a noisy background), `photo` (a shaded shape over a smooth random-gradient "photograph" with
clutter) and `sketch` (jittered pencil strokes). Train images use some styles and test images another,
so a score on the test set measures how a member carries over to an unseen style, as with artwork
drawn by other hands. `write_competition` lays it out like the Simpsons competition, with the test
labels beside it.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

CLASSES = ["disc", "square", "triangle", "star", "cross", "ring", "arrow", "hexagon", "crescent", "heart"]
GLYPH_CLASSES = ["glyph_A", "glyph_G", "glyph_K", "glyph_R", "glyph_5", "glyph_7"]
FONTS = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX]
STYLES = ["flat", "outline", "textured", "photo", "sketch"]


def outline(name: str, circle_points: int = 64, heart_points: int = 80) -> list[np.ndarray]:
    """The shape as closed polygons in a unit box centred at 0 (before rotation and scaling); the round
    shapes with as many points as given (`concepts.py` draws with 48 and 60)."""
    t = np.linspace(0, 2 * np.pi, circle_points, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], 1)
    if name == "disc":
        return [circle]
    if name == "ring":
        return [circle, circle * 0.55]
    if name == "square":
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 0.8]
    if name == "triangle":
        return [np.array([[0, -1], [0.95, 0.7], [-0.95, 0.7]], float)]
    if name == "hexagon":
        a = np.arange(6) * np.pi / 3
        return [np.stack([np.cos(a), np.sin(a)], 1)]
    if name == "star":
        a = np.arange(10) * np.pi / 5 - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return [np.stack([r * np.cos(a), r * np.sin(a)], 1)]
    if name == "cross":
        w = 0.3
        return [np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1], [-w, w], [-1, w],
                          [-1, -w], [-w, -w]], float)]
    if name == "arrow":
        return [np.array([[-1, -0.25], [0.2, -0.25], [0.2, -0.65], [1, 0], [0.2, 0.65], [0.2, 0.25], [-1, 0.25]],
                         float)]
    if name == "crescent":
        inner = circle * 0.85 + np.array([0.45, -0.1])
        outside = np.linalg.norm(circle - np.array([0.45, -0.1]), axis=1) > 0.85
        arc = circle[outside]
        back = inner[np.linalg.norm(inner, axis=1) < 1][::-1]
        return [np.concatenate([arc, back])]
    if name == "heart":
        s = np.linspace(0, 2 * np.pi, heart_points, endpoint=False)
        x = 16 * np.sin(s) ** 3
        y = -(13 * np.cos(s) - 5 * np.cos(2 * s) - 2 * np.cos(3 * s) - np.cos(4 * s))
        return [np.stack([x, y], 1) / 17.0]
    raise ValueError(name)


def photo_background(size: int, rng: np.random.Generator, clutter_fraction: int = 6) -> np.ndarray:
    """A smooth random-gradient "photograph" (float32, size x size x 3) with 2-5 discs of clutter, each up
    to size / clutter_fraction in radius."""
    small = rng.integers(0, 256, (3, 3, 3)).astype(np.float32)
    img = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(2, 6))):
        c = rng.integers(0, size, 2)
        cv2.circle(img, (int(c[0]), int(c[1])), int(rng.integers(2, max(3, size // clutter_fraction))),
                   [float(v) for v in rng.integers(0, 256, 3)], -1)
    return img


def _place(polys: list[np.ndarray], size: int, rng: np.random.Generator) -> list[np.ndarray]:
    angle = rng.uniform(-0.5, 0.5)  # a tilt, not a full turn: classes such as arrow keep their meaning
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    scale = size * rng.uniform(0.25, 0.42)
    centre = size / 2 + rng.uniform(-0.12, 0.12, 2) * size
    aspect = np.array([rng.uniform(0.8, 1.2), 1.0])
    return [((p * aspect) @ rot.T * scale + centre).astype(np.int32) for p in polys]


def _colour(rng) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 230, 3))


def _glyph(text: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """A character in a random font and stroke weight, tilted, scaled and placed: (mask, its contours)."""
    canvas = 128
    font, thickness = FONTS[int(rng.integers(len(FONTS)))], int(rng.integers(6, 14))
    (w, h), base = cv2.getTextSize(text, font, 3.0, thickness)
    big = np.zeros((canvas, canvas), np.uint8)
    cv2.putText(big, text, ((canvas - w) // 2, (canvas + h) // 2), font, 3.0, 255, thickness, cv2.LINE_AA)
    scale = size / canvas * rng.uniform(0.75, 1.05)
    m = cv2.getRotationMatrix2D((canvas / 2, canvas / 2), float(np.degrees(rng.uniform(-0.5, 0.5))), scale)
    m[:, 2] += size / 2 - canvas / 2 + rng.uniform(-0.1, 0.1, 2) * size
    mask = (cv2.warpAffine(big, m, (size, size)) > 127).astype(np.uint8) * 255
    contours, _ = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return mask, [c.reshape(-1, 2) for c in contours if len(c) >= 3] or [np.zeros((3, 2), np.int32)]


def _mask(name: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    if name in GLYPH_CLASSES:
        return _glyph(name.split("_", 1)[1], size, rng)
    polys = _place(outline(name), size, rng)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, polys[:1], 255)
    for h in polys[1:]:  # a ring's inner circle
        cv2.fillPoly(mask, [h], 0)
    return mask, polys


def draw(name: str, style: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One RGB uint8 image of shape or glyph `name` in `style`, size x size."""
    mask, polys = _mask(name, size, rng)
    if style == "flat":
        img = np.full((size, size, 3), rng.integers(225, 256), np.uint8)
        img[mask > 0] = _colour(rng)
    elif style == "outline":
        img = np.full((size, size, 3), rng.integers(200, 256, 3), np.uint8)
        cv2.polylines(img, polys, True, _colour(rng), max(1, size // 24), cv2.LINE_AA)
    elif style == "textured":
        img = rng.integers(120, 200, (size, size, 3)).astype(np.uint8)
        yy, xx = np.mgrid[:size, :size]
        period = max(3, size // int(rng.integers(6, 12)))
        if rng.random() < 0.5:
            pattern = ((xx + yy) // period) % 2 == 0
        else:
            pattern = ((xx // period + yy // period) % 2 == 0) & ((xx % period) < period // 2)
        fill = np.where(pattern[..., None], np.array(_colour(rng), np.uint8), np.array(_colour(rng), np.uint8))
        img[mask > 0] = fill[mask > 0]
    elif style == "photo":
        img = photo_background(size, rng)
        shade = np.linspace(0.6, 1.2, size)[None, :, None] * np.array(_colour(rng), np.float32)
        img = np.where(mask[..., None] > 0, shade, img)
        img = np.clip(cv2.GaussianBlur(img, (0, 0), 0.8) + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    elif style == "sketch":
        img = np.full((size, size, 3), rng.integers(235, 256), np.uint8)
        pencil = tuple(int(v) for v in rng.integers(20, 90, 3))
        for _ in range(2):  # two loose passes of jittered strokes
            for p in polys:
                jitter = (p + rng.normal(0, size / 60, p.shape)).astype(np.int32)
                cv2.polylines(img, [jitter], True, pencil, 1, cv2.LINE_AA)
    else:
        raise ValueError(style)
    return img


def write_competition(root: Path, train_styles=("flat", "textured", "photo"), test_styles=("outline", "sketch"),
                      per_class: int = 40, test_per_class: int = 20, seed: int = 0, classes: list[str] = CLASSES,
                      imbalance: float = 1.0) -> Path:
    """input/train/<class>/*.png, input/testset/*.png, input/sample_submission.csv; test labels in
    input/test_labels.csv (never read by foldblend). With `imbalance` r > 1, class c of C keeps
    per_class x r^(-c/(C-1)) train images (the first per_class, the last per_class / r); the test set
    stays balanced. Returns the input folder."""
    rng = np.random.default_rng(seed)
    inp = Path(root) / "input"
    rows = []
    for c, name in enumerate(classes):
        (inp / "train" / name).mkdir(parents=True, exist_ok=True)
        n = int(round(per_class * imbalance ** (-c / max(len(classes) - 1, 1))))
        for i in range(n):
            style = train_styles[i % len(train_styles)]
            img = draw(name, style, int(rng.integers(28, 121)), rng)
            Image.fromarray(img).save(inp / "train" / name / f"{name}_{i:03d}.png")
    (inp / "testset").mkdir(parents=True, exist_ok=True)
    for j in range(test_per_class * len(classes)):
        name, style = classes[j % len(classes)], test_styles[(j // len(classes)) % len(test_styles)]
        image_id = f"t{j:04d}.png"
        Image.fromarray(draw(name, style, int(rng.integers(28, 121)), rng)).save(inp / "testset" / image_id)
        rows.append((image_id, name, style))
    test = pd.DataFrame(rows, columns=["Id", "Expected", "style"])
    test.assign(Expected=classes[0])[["Id", "Expected"]].to_csv(inp / "sample_submission.csv", index=False)
    test.to_csv(inp / "test_labels.csv", index=False)
    return inp


if __name__ == "__main__":  # a contact sheet: one row per class, one column per style
    import sys

    rng = np.random.default_rng(1)
    sheet = np.concatenate([np.concatenate([draw(n, s, 64, rng) for s in STYLES], 1) for n in CLASSES + GLYPH_CLASSES],
                           0)
    Image.fromarray(sheet).save(sys.argv[1] if len(sys.argv) > 1 else "styles_sheet.png")
