"""Generated competitions built to make cross-validation lie, with the truth known.

A *concept* is one designed object: a main shape (its class) at a fixed tilt and aspect, two or three
smaller shapes of other kinds as decorations at fixed places, and a palette. Each concept is drawn in
several *styles* (flat colour, outline, striped fill, a "photograph" with clutter, a pencil sketch) and
each drawing in a few *variants* (colour, position and scale jitter, another background). Siblings of a
concept share its design, so a model can remember the concept instead of learning the class, as with
the same object drawn by several artists, the same patient in several scans or the same product shot
from several angles. Splits:

- `unseen_concepts`: test concepts never appear in train (every style and variant held out);
- `unseen_styles`: every concept is in train, but each concept's test style is one it has no train
  image in (the styles themselves all occur in train, on other concepts);
- `random`: train and test are a random partition of the images: no shift.

`write_competition` lays a split out as input/train/<class>/*.png, input/testset/*.png and
input/sample_submission.csv, with the truth (class, concept, style) in input/test_labels.csv and
input/train_truth.csv, which foldblend never reads.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from styles import outline, photo_background  # noqa: E402

SHAPES = ["disc", "square", "triangle", "star", "cross", "ring", "arrow", "heart", "hexagon", "crescent"]
STYLES = ["flat", "outline", "textured", "photo", "sketch"]
SPLITS = ("unseen_concepts", "unseen_styles", "low_resolution", "random")


def _outline(name: str) -> list[np.ndarray]:
    """Closed polygons of a shape in a unit box centred at 0 (`styles.py`'s shapes, fewer points)."""
    return outline(name, circle_points=48, heart_points=60)


@dataclass(frozen=True)
class Part:
    shape: str
    centre: tuple[float, float]   # in units of the image side
    scale: float                  # radius in units of the image side
    tilt: float                   # radians
    aspect: float
    colour: tuple[int, int, int]


@dataclass(frozen=True)
class Concept:
    label: int                    # class index (the main shape)
    name: str                     # e.g. star_03
    parts: tuple[Part, ...]       # the main shape first, then the decorations
    background: tuple[int, int, int]


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 230, 3))


def make_concept(label: int, index: int, classes: list[str], rng: np.random.Generator) -> Concept:
    """One designed object of class `classes[label]`: the main shape (the largest part) and decorations."""
    main = Part(classes[label], (rng.uniform(0.38, 0.62), rng.uniform(0.38, 0.62)), rng.uniform(0.2, 0.28),
                rng.uniform(-0.5, 0.5), rng.uniform(0.75, 1.25), _colour(rng))
    others = [s for s in SHAPES if s != classes[label]]
    decorations = []
    for _ in range(int(rng.integers(2, 4))):  # smaller shapes of other kinds, at fixed places around it
        angle = rng.uniform(0, 2 * np.pi)
        centre = (0.5 + 0.33 * np.cos(angle), 0.5 + 0.33 * np.sin(angle))
        decorations.append(Part(str(rng.choice(others)), centre, rng.uniform(0.08, 0.14), rng.uniform(-1, 1),
                                rng.uniform(0.7, 1.3), _colour(rng)))
    return Concept(label, f"{classes[label]}_{index:02d}", (main, *decorations),
                   tuple(int(c) for c in rng.integers(150, 256, 3)))


def _polygons(part: Part, size: int, shift: np.ndarray, zoom: float) -> list[np.ndarray]:
    rot = np.array([[np.cos(part.tilt), -np.sin(part.tilt)], [np.sin(part.tilt), np.cos(part.tilt)]])
    centre = (np.array(part.centre) + shift) * size
    return [((p * np.array([part.aspect, 1.0])) @ rot.T * part.scale * zoom * size + centre).astype(np.int32)
            for p in _outline(part.shape)]


def _jitter(colour, rng: np.random.Generator, amount: int) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def render(concept: Concept, style: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """The concept drawn in `style`; `rng` makes the variant (colours, placement, background)."""
    shift, zoom = rng.uniform(-0.05, 0.05, 2), rng.uniform(0.9, 1.1)
    bg = np.array(_jitter(concept.background, rng, 25), np.float32)
    if style == "photo":
        img = photo_background(size, rng, clutter_fraction=8)
    elif style == "textured":
        img = np.clip(bg + rng.normal(0, 18, (size, size, 3)), 0, 255).astype(np.float32)
    else:
        img = np.empty((size, size, 3), np.float32)
        img[:] = bg
    yy, xx = np.mgrid[:size, :size]
    period = max(3, size // int(rng.integers(7, 12)))
    stripes = ((xx + yy) // period) % 2 == 0
    for part in concept.parts:
        polys = _polygons(part, size, shift, zoom)
        colour = np.array(_jitter(part.colour, rng, 30), np.float32)
        if style in ("outline", "sketch"):
            width = max(1, size // 28) if style == "outline" else 1
            passes = 1 if style == "outline" else 2
            for _ in range(passes):
                jittered = [(p + rng.normal(0, size / 80, p.shape)).astype(np.int32) if style == "sketch" else p
                            for p in polys]
                cv2.polylines(img, jittered, True, [float(v) for v in (colour * (0.5 if style == "sketch" else 1))],
                              width, cv2.LINE_AA)
            continue
        mask = np.zeros((size, size), np.uint8)
        cv2.fillPoly(mask, polys[:1], 255)
        for hole in polys[1:]:
            cv2.fillPoly(mask, [hole], 0)
        inside = mask > 0
        if style == "textured":
            img[inside & stripes] = colour
            img[inside & ~stripes] = colour * 0.55 + 100
        elif style == "photo":
            shade = np.linspace(0.6, 1.25, size)[None, :, None] * colour
            img = np.where(inside[..., None], shade, img)
        else:
            img[inside] = colour
    if style == "photo":
        img = cv2.GaussianBlur(img, (0, 0), 0.8) + rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def universe(n_classes: int = 8, concepts_per_class: int = 12, styles: tuple[str, ...] = tuple(STYLES),
             variants: int = 3, seed: int = 0) -> tuple[list[Concept], pd.DataFrame]:
    """Every concept and one row per image to draw: concept, label, style, variant."""
    if not 2 <= n_classes <= len(SHAPES):
        raise ValueError(f"n_classes must be in 2..{len(SHAPES)}")
    rng = np.random.default_rng(seed)
    classes = SHAPES[:n_classes]
    concepts = [make_concept(c, i, classes, rng) for c in range(n_classes) for i in range(concepts_per_class)]
    rows = [(k, concept.label, style, v) for k, concept in enumerate(concepts) for style in styles
            for v in range(variants)]
    return concepts, pd.DataFrame(rows, columns=["concept", "label", "style", "variant"])


def split(images: pd.DataFrame, how: str, test_fraction: float = 0.3, seed: int = 0) -> np.ndarray:
    """A boolean test mask over `images` (rows of `universe`), by one of `SPLITS`."""
    rng = np.random.default_rng(seed + 1)
    if how == "unseen_concepts":  # whole concepts, about test_fraction of each class
        test_concepts = []
        for label, concepts in images.groupby("label")["concept"].unique().items():
            concepts = rng.permutation(concepts)
            test_concepts += list(concepts[:max(1, round(test_fraction * len(concepts)))])
        return images["concept"].isin(test_concepts).to_numpy()
    if how == "unseen_styles":  # per concept, some of its styles go to test (other concepts keep them in train)
        styles = sorted(images["style"].unique())
        n_test = max(1, round(test_fraction * len(styles)))
        held = {c: set(rng.permutation(styles)[:n_test]) for c in images["concept"].unique()}
        return np.array([s in held[c] for c, s in zip(images["concept"], images["style"])])
    if how in ("random", "low_resolution"):  # low_resolution: the test images are then degraded (`degrade`)
        return rng.random(len(images)) < test_fraction
    raise ValueError(f"split must be one of {SPLITS}, got {how!r}")


def degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another image source: grey, a fifth of the resolution scaled back up, and a JPEG at quality 15-30
    (an old scanner or a phone photo of a screen) -- the `low_resolution` split's test images."""
    size = img.shape[0]
    small = cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (max(12, size // 5),) * 2, interpolation=cv2.INTER_AREA)
    grey = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)
    ok, data = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(15, 31))])
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2RGB)


def add_arguments(parser) -> None:
    """The options of a bench that builds these competitions: seeds, splits and the universe's size."""
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--cases", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--concepts", type=int, default=12, help="concepts per class")
    parser.add_argument("--variants", type=int, default=3, help="variants per (concept, style)")
    parser.add_argument("--test-variants", type=int, default=None,
                        help="variants per (concept, style) on the test side (default: --variants): a larger test "
                             "from the same training set")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels")


def write_competition(root: Path, how: str, n_classes: int = 8, concepts_per_class: int = 12, variants: int = 3,
                      size: int = 96, test_fraction: float = 0.3, seed: int = 0,
                      styles: tuple[str, ...] = tuple(STYLES), test_variants: int | None = None) -> Path:
    """A competition folder in the Simpsons layout for split `how`; returns input/. With `test_variants`
    above `variants`, the split is drawn over that many variants and the training side keeps only the first
    `variants` of each (concept, style): the same training set's size, a test `test_variants / variants`
    times larger (at 300 test images the test's own sampling noise, ~0.025 macro-F1, is as large as the
    margins a bench checks)."""
    test_variants = variants if test_variants is None else test_variants
    concepts, images = universe(n_classes, concepts_per_class, styles, variants=max(variants, test_variants),
                                seed=seed)
    classes = SHAPES[:n_classes]
    test = split(images, how, test_fraction, seed)
    keep = np.where(test, images["variant"] < test_variants, images["variant"] < variants)
    rng = np.random.default_rng(seed + 2)
    inp = Path(root) / "input"
    train_rows, test_rows = [], []
    for j, row in enumerate(images.itertuples()):
        if not keep[j]:
            continue
        concept = concepts[row.concept]
        img = render(concept, row.style, size, rng)
        if test[j]:
            img = degrade(img, rng) if how == "low_resolution" else img
            name = f"t{len(test_rows):05d}.png"
            path = inp / "testset" / name
            test_rows.append((name, classes[row.label], concept.name, row.style))
        else:
            path = inp / "train" / classes[row.label] / f"{concept.name}_{row.style}_{row.variant}.png"
            train_rows.append((path.relative_to(inp).as_posix(), classes[row.label], concept.name, row.style))
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
    truth = pd.DataFrame(test_rows, columns=["Id", "Expected", "concept", "style"])
    truth[["Id"]].assign(Expected=classes[0]).to_csv(inp / "sample_submission.csv", index=False)
    truth.to_csv(inp / "test_labels.csv", index=False)
    pd.DataFrame(train_rows, columns=["image", "label", "concept", "style"]).to_csv(inp / "train_truth.csv",
                                                                                  index=False)
    return inp


if __name__ == "__main__":  # a contact sheet: one row per concept, one column per style
    import sys

    concepts, _ = universe(n_classes=8, concepts_per_class=2)
    rng = np.random.default_rng(1)
    sheet = np.concatenate([np.concatenate([render(c, s, 96, rng) for s in STYLES], 1) for c in concepts[::2]], 0)
    Image.fromarray(sheet).save(sys.argv[1] if len(sys.argv) > 1 else "concepts_sheet.png")
