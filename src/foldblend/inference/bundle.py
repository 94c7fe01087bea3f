"""The bundle format: an experiment or the blend as one self-contained folder, written and loaded back.

A bundle is what "an image folder plus trained weights" needs, on any machine, without models/ or
oof/: every fold model's weights as safetensors (tensors only, nothing unpickled on load) and a
`bundle.json` that says how to turn them into class probabilities - classes in index order, per fold
model its kind, architecture, image size, normalisation, TTA views and mixed precision; and under
`blend` the fitted blend (`ensemble.fitted.FittedBlend.to_json`: options, member weights, TTA and
temperatures, a stacker's coefficients, calibration, class biases; an experiment: one member, its folds
and views averaged). `load_predictor(project, "path/to/bundle")` reads it into the same `Predictor` that
`evaluate`, `predict` (and a web app) use for the project's own models, and the blend is applied by the
function that made the blend's test predictions, so the predictions are the same. A bundle of another
format (an older foldblend's) is refused: export it again.

Members carry a `kind` (`members.registry`), which says what is written and rebuilds the fold models:
`cnn` (a network rebuilt from `members.cnn.models.Arch`, one safetensors file per fold) or `embedding`
(the frozen backbone's weights once per member, `backbone.safetensors`, and each fold's head arrays; no
package of pretrained weights is needed to load it), or any registered kind that implements
`MemberKind.rebuild_fold`. A bundle naming a kind this foldblend does not have is refused with the reason
instead of half-loaded.
"""
from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from foldblend.artifacts import changed_members, write_json
from foldblend.ensemble.fitted import FittedBlend
from foldblend.errors import FoldblendError
from foldblend.inference.predictor import BLEND, FoldModel, Predictor, load_project_predictor, read_blend
from foldblend.members.registry import get_kind, kind_names
from foldblend.safety import remove

BUNDLE_FILE = "bundle.json"
FORMAT = "foldblend-bundle/2"  # /2: the fitted blend (`blend`) replaced the approximate `combine`


class BundleError(FoldblendError):
    """A bundle cannot be written there, or read back; the message names the file and the fix."""


def find_bundle(name: str | Path) -> Path | None:
    """The bundle folder `name` points at (the folder or its bundle.json), else None."""
    path = Path(name)
    if path.name == BUNDLE_FILE and path.is_file():
        return path.parent
    return path if (path / BUNDLE_FILE).is_file() else None


# ----------------------------------------------------------------------------- writing

def bundle_metadata(predictor: Predictor, weight_files: dict[str, str], provenance: dict) -> dict:
    """bundle.json's content for a predictor whose fold models' weights are at `weight_files` (relative)."""
    members = []
    for name, models in predictor.members.items():
        members.append({
            "name": name, "kind": models[0].kind,
            "folds": [{"name": fm.name, "weights": weight_files[fm.name], "arch": fm.arch, "img_size": fm.img_size,
                       "mean": list(fm.mean), "std": list(fm.std), "tta": list(fm.views), "amp": fm.amp,
                       **get_kind(fm.kind).fold_settings(fm)}
                      for fm in models]})
    return {"format": FORMAT, "name": predictor.name, "classes": list(predictor.classes),
            "blend": predictor.blend.to_json(), "members": members, "notes": list(predictor.notes),
            "provenance": provenance}


def _bundled_kinds() -> list[str]:
    return [name for name in kind_names() if get_kind(name).bundles]


def export_bundle(project, name: str, out: str | Path) -> Path:
    """Write `name` (an experiment or `blend`) as a bundle folder `out` inside the project; returns it.

    Built under a temporary name beside `out` and renamed into place, so a kill leaves the old bundle
    or the new one; an existing `out` is replaced only when it is a bundle.
    """

    out = _inside_project(project, out)
    if out.exists() and find_bundle(out) is None and any(out.iterdir()):
        raise BundleError(f"{project.rel(out)}: exists and is not a bundle; choose another OUT or empty it")
    predictor = load_project_predictor(project, name)
    digests = read_blend(project).get("member_digests") or {} if name == BLEND else {}
    if predictor.notes and name == BLEND and changed_members(project.oof, digests):
        raise BundleError(f"a member changed after the last blend ({predictor.notes[-1]}); run `foldblend blend` "
                          f"again before exporting it")
    unsupported = [n for n, models in predictor.members.items() if models[0].kind not in _bundled_kinds()]
    if unsupported:
        raise BundleError(f"member {unsupported[0]!r} is of kind {predictor.members[unsupported[0]][0].kind!r}, "
                          f"which bundles cannot hold yet (kinds: {', '.join(_bundled_kinds())})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        files = {}
        for member, models in predictor.members.items():
            kind = get_kind(models[0].kind)
            for stem, state in kind.member_tensors(models).items():  # once per member (a shared backbone)
                _save_tensors(tmp, f"weights/{member}/{stem}.safetensors", state)
            for k, fm in enumerate(models):
                rel = f"weights/{member}/{Path(fm.name).name or f'fold_{k}'}.safetensors"
                _save_tensors(tmp, rel, kind.fold_tensors(fm))
                files[fm.name] = rel
        write_json(tmp / BUNDLE_FILE, bundle_metadata(predictor, files, _provenance(project, name)))
        umask = os.umask(0)
        os.umask(umask)
        for folder in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:  # mkdtemp made tmp 0700
            folder.chmod(0o777 & ~umask)
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            remove(tmp, inside=out.parent)
    return out


def _save_tensors(folder: Path, rel: str, state: dict) -> None:
    from safetensors.torch import save_file

    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    save_file({key: v.detach().cpu().contiguous() for key, v in state.items()}, str(folder / rel))


def _provenance(project, name: str) -> dict:
    """Where the bundle came from and what it scored, for whoever receives it."""
    info = {"exported": datetime.now(timezone.utc).isoformat(timespec="seconds"), "project": project.root.name,
            "source": name}
    if name == BLEND:
        blend = read_blend(project)
        info.update({"cv_nested": blend.get("cv_nested"), "holdout": blend.get("holdout") or None,
                     "options": blend.get("options")})
    else:
        scores = project.oof_dir(name) / "scores.json"
        if scores.exists():
            info["cv"] = json.loads(scores.read_text(encoding="utf-8")).get("overall")
    return info


def _inside_project(project, out: str | Path) -> Path:
    out = Path(os.path.abspath(out))
    if not out.is_relative_to(project.root) or out == project.root:
        raise BundleError(f"{out}: OUT must be a folder inside the project ({project.root}); foldblend writes "
                          f"nothing outside it. Export there, then copy the folder wherever it is needed")
    return out


def _replace_dir(new: Path, target: Path) -> None:
    """Put the finished folder `new` at `target`, an older bundle there moved aside first, then deleted."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        remove(old, inside=target.parent)


# ----------------------------------------------------------------------------- reading

def load_bundle(folder: str | Path, device="cpu") -> Predictor:
    """The bundle at `folder` as a Predictor (fold models rebuilt on `device`)."""
    import torch
    from safetensors.torch import load_file


    folder = Path(folder)
    path = folder / BUNDLE_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BundleError(f"{path}: unreadable ({e}); export the bundle again") from None
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != FORMAT:
        raise BundleError(f"{path}: bundle format {found!r}, this foldblend reads {FORMAT!r}; export it again "
                          f"(`foldblend export --exp NAME OUT`) with this foldblend")
    try:
        fitted = FittedBlend.from_json(meta.get("blend"))
    except ValueError as e:
        raise BundleError(f"{path}: {e}; export the bundle again") from None
    classes, members = list(meta["classes"]), {}
    for m in meta["members"]:
        if m["kind"] not in kind_names() or not get_kind(m["kind"]).bundles:
            raise BundleError(f"{path}: member {m['name']!r} is of kind {m['kind']!r}, which this foldblend cannot "
                              f"load (kinds: {', '.join(_bundled_kinds())})")
        kind, models, shared = get_kind(m["kind"]), [], {}  # shared: what the member's folds share
        for f in m["folds"]:
            file = _bundled(folder, f["weights"], path, m["name"])

            def member_tensors(stem: str, f=f, m=m) -> dict:
                rel = str(Path(f["weights"]).parent / f"{stem}.safetensors")
                return load_file(str(_bundled(folder, rel, path, m["name"])))

            model = kind.rebuild_fold(f, load_file(str(file)), member_tensors, shared)
            models.append(FoldModel(f"{m['name']}/{Path(f['weights']).stem}", model.to(torch.device(device)).eval(),
                                    classes, int(f["img_size"]), list(f["tta"]), list(f["mean"]), list(f["std"]),
                                    str(f["amp"]), arch=dict(f["arch"]), kind=m["kind"]))
        members[m["name"]] = models
    try:
        fitted = fitted.only(list(members))
    except ValueError as e:
        raise BundleError(f"{path}: {e}, which the bundle does not hold; export the bundle again") from None
    return Predictor(meta["name"], classes, members, fitted, notes=list(meta.get("notes") or []))


def _bundled(folder: Path, rel: str, path: Path, member: str) -> Path:
    file = (folder / rel).resolve()
    if not file.is_relative_to(folder.resolve()) or not file.is_file():
        raise BundleError(f"{path}: weights {rel!r} of {member} are missing from the bundle")
    return file


# ----------------------------------------------------------------------------- CLI hooks
