"""The figures of `evaluate` and `report`, drawn with matplotlib (Agg) and returned as PNG bytes.

Every figure is sized from its content (classes, folds), so a 42-class confusion matrix stays legible:
the cells grow with the class count, long names are shortened on the axes, and cell values are only
printed where they fit. Every label is plain text: class and member names are data, never
matplotlib markup (a class folder called `$\\foo$` would otherwise be parsed as mathtext and crash).
"""
from __future__ import annotations

import base64
import functools
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402

DPI = 100    # layout: one figure inch is shown as 100 CSS pixels
SCALE = 2    # PNGs hold SCALE x the pixels they are shown at, so zooming into 42 classes stays sharp
MAX_LABEL = 22  # characters of a class name on an axis
PLAIN_TEXT = {"text.parse_math": False}  # no mathtext: `$` in a name is a dollar sign


def plain_text(draw):
    """Build and render the figure with every label taken literally."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(PLAIN_TEXT):
            return draw(*args, **kwargs)
    return wrapper


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI * SCALE, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels, from the PNG header."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def short(name: str, limit: int = MAX_LABEL) -> str:
    name = str(name)
    return name if len(name) <= limit else name[: limit - 1] + "…"


def normalised_confusion(y_true, y_pred, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(counts, row-normalised) confusion matrices over all n_classes; empty rows stay zero."""
    counts = confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))
    rows = counts.sum(axis=1, keepdims=True)
    return counts, np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)


@plain_text
def confusion_png(y_true, y_pred, classes: list[str], title: str = "") -> bytes:
    """Row-normalised confusion matrix (recall on the diagonal), class names on both axes."""
    n = len(classes)
    counts, norm = normalised_confusion(y_true, y_pred, n)
    cell = 0.42 if n <= 12 else 0.3 if n <= 30 else 0.25  # 42 classes still fit a 1280 px page
    side = max(4.5, n * cell + 1.0)
    fig, ax = plt.subplots(figsize=(side + 0.6, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    labels = [short(c) for c in classes]
    font = 10 if n <= 12 else 8 if n <= 30 else 7
    ax.set_xticks(range(n), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    if n <= 50:  # values as percentages, only where a cell is non-empty, so the matrix stays readable
        for i, j in zip(*np.nonzero(counts)):
            v = norm[i, j]
            ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=font - 1 if n <= 30 else 6.5,
                    color="white" if v > 0.5 else "black")
    ax.set_xticks(np.arange(-0.5, n, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n, 1), minor=True)
    ax.grid(which="minor", color="#e5e5e5", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.015, shrink=0.5, label="share of the true class")
    return png_bytes(fig)


CURVES = (("train_loss", "train loss"), ("val_loss", "val loss"), ("val_macro_f1", "val macro-F1"))


@plain_text
def learning_curves_png(logs: dict) -> bytes:
    """Train loss, val loss and val macro-F1 per epoch, one line per fold ({fold: epoch-log DataFrame})."""
    fig, axes = plt.subplots(1, len(CURVES), figsize=(12, 3.0))
    for ax, (column, label) in zip(axes, CURVES):
        for fold, log in sorted(logs.items()):
            if column in log and "epoch" in log:
                ax.plot(log["epoch"], log[column], marker="o", markersize=3, linewidth=1.4, label=f"fold {fold}")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    # outside the axes: curves start in every corner, a legend inside would hide one of them
    axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), ncols=2 if len(logs) > 10 else 1,
                    frameon=False)
    fig.tight_layout()
    return png_bytes(fig)


@plain_text
def per_class_f1_png(f1_by_source: dict[str, np.ndarray], classes: list[str]) -> bytes:
    """Grouped vertical bars, one group per class and one colour per source; class names read upwards."""
    n, k = len(classes), max(len(f1_by_source), 1)
    fig, ax = plt.subplots(figsize=(min(12.0, max(6.0, 0.27 * n + 1.5)), 3.8))
    width = 0.8 / k
    x = np.arange(n)
    for i, (name, f1) in enumerate(f1_by_source.items()):
        ax.bar(x + (i - (k - 1) / 2) * width, f1, width=width, label=f"{name} (macro-F1 {np.mean(f1):.4f})")
    ax.set_xticks(x, [short(c) for c in classes], rotation=90 if n > 8 else 0, fontsize=8 if n > 20 else 9)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1 (out of fold)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=9, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=k, frameon=False)
    return png_bytes(fig)


def thumbnail_png(rgb: np.ndarray, max_side: int = 160) -> bytes:
    """A PNG of the image scaled (aspect kept) so its longer side is max_side (small ones are enlarged)."""
    import cv2

    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
    small = cv2.resize(rgb, size, interpolation=interp)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode a thumbnail")
    return buf.tobytes()
