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
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path

from foldblend.artifacts import changed_members, write_json
from foldblend.config import CHOICES, TTA_VIEW_NAMES
from foldblend.ensemble.fitted import FittedBlend
from foldblend.errors import FoldblendError
from foldblend.inference.predictor import BLEND, FoldModel, Predictor, load_project_predictor, read_blend
from foldblend.members.base import MemberKind
from foldblend.members.registry import get_kind, kind_names
from foldblend.safety import create_temporary_dir, process_alive, remove, resolve_inside, sweep_temporaries

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
    tmp = create_temporary_dir(out)  # named for this process: a later export sweeps it if this one is killed
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
        for p in tmp.rglob("*"):  # safetensors writes 0600: every file gets what a plain open() gives
            p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)
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
    """Where `out` really is (every link resolved), which must be inside the project."""
    real = resolve_inside(out, project.root)
    if real is None:
        through = os.path.realpath(out)
        link = f" (through a link it is {through})" if Path(through) != Path(os.path.abspath(out)) else ""
        raise BundleError(f"{out}: OUT must be a folder inside the project ({project.root}){link}; foldblend writes "
                          f"nothing outside it. Export there, then copy the folder wherever it is needed")
    return real


LEGACY_OLD = re.compile(r"\..+\.old-(?P<pid>\d+)")  # an older foldblend's bundle moved aside


def sweep_export_temporaries(project, out: str | Path) -> list[Path]:
    """Remove what killed exports left beside `out`: temporary bundles and old bundles moved aside by
    writers that are gone (a live export's are kept); returns them."""
    parent = _inside_project(project, out).parent
    gone = sweep_temporaries(parent, folders=True)
    for p in sorted(parent.glob(".*.old-*")) if parent.is_dir() else []:
        m = LEGACY_OLD.fullmatch(p.name)
        if m and p.is_dir() and not process_alive(int(m["pid"])) and remove(p, inside=parent):
            gone.append(p)
    return gone


def _replace_dir(new: Path, target: Path) -> None:
    """Put the finished folder `new` at `target`, an older bundle there moved aside first, then deleted."""
    old = None
    if target.exists():
        old = create_temporary_dir(target, ".old")  # rename() replaces an empty folder
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        remove(old, inside=target.parent)


# ----------------------------------------------------------------------------- reading

def load_bundle(folder: str | Path, device="cpu") -> Predictor:
    """The bundle at `folder` as a Predictor (fold models rebuilt on `device`); a BundleError naming the file
    and what is wrong for anything that is not what `export_bundle` writes (a bundle is a stranger's input)."""
    import torch

    folder = Path(folder)
    path = folder / BUNDLE_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BundleError(f"{path}: unreadable ({e}); export the bundle again") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{path}: holds a JSON {type(meta).__name__}, not an object; export the bundle again")
    if meta.get("format") != FORMAT:
        raise BundleError(f"{path}: bundle format {meta.get('format')!r}, this foldblend reads {FORMAT!r}; export "
                          f"it again (`foldblend export --exp NAME OUT`) with this foldblend")
    check_bundle_json(meta, path)
    classes = list(meta["classes"])
    try:
        fitted = FittedBlend.from_json(meta["blend"])
    except ValueError as e:
        raise BundleError(f"{path}: key 'blend': {e}; export the bundle again") from None
    if fitted.biases is not None and len(fitted.biases) != len(classes):
        raise BundleError(f"{path}: key 'blend': {len(fitted.biases)} class biases for {len(classes)} classes; "
                          f"export the bundle again")
    members = {}
    for m in meta["members"]:
        if m["kind"] not in kind_names() or not get_kind(m["kind"]).bundles:
            raise BundleError(f"{path}: member {m['name']!r} is of kind {m['kind']!r}, which this foldblend cannot "
                              f"load (kinds: {', '.join(_bundled_kinds())})")
        kind, models, shared = get_kind(m["kind"]), [], {}  # shared: what the member's folds share
        for f in m["folds"]:
            extra = sorted(set(f) - set(FOLD_KEYS))
            if extra and type(kind).fold_settings is MemberKind.fold_settings:  # the kind writes no settings
                raise BundleError(f"{path}: member {m['name']!r} fold {f['name']!r} has unknown key {extra[0]!r} "
                                  f"(keys: {', '.join(FOLD_KEYS)}); export the bundle again")

            def member_tensors(stem: str, f=f, m=m) -> dict:
                return _tensors(folder, str(Path(f["weights"]).parent / f"{stem}.safetensors"), path, m["name"])

            tensors = _tensors(folder, f["weights"], path, m["name"])
            try:
                model = kind.rebuild_fold(f, tensors, member_tensors, shared)
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
                if isinstance(e, FoldblendError):
                    raise
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise BundleError(f"{path}: member {m['name']!r} fold {f['name']!r}: its weights {f['weights']!r} "
                                  f"and settings do not make a model ({reason}); export the bundle again") from None
            models.append(FoldModel(f"{m['name']}/{Path(f['weights']).stem}", model.to(torch.device(device)).eval(),
                                    classes, int(f["img_size"]), list(f["tta"]), list(f["mean"]), list(f["std"]),
                                    str(f["amp"]), arch=dict(f["arch"]), kind=m["kind"]))
        members[m["name"]] = models
    try:
        fitted = fitted.only(list(members))
    except ValueError as e:
        raise BundleError(f"{path}: {e}, which the bundle does not hold; export the bundle again") from None
    return Predictor(meta["name"], classes, members, fitted, notes=list(meta.get("notes") or []))


# bundle.json's schema: key -> type (and the keys that must be there); a fold's entry may carry more keys, its
# kind's own settings (`MemberKind.fold_settings`), which the kind's `rebuild_fold` reads
TOP_KEYS = {"format": str, "name": str, "classes": list, "blend": dict, "members": list, "notes": list,
            "provenance": dict}
TOP_REQUIRED = ("format", "name", "classes", "blend", "members")
MEMBER_KEYS = {"name": str, "kind": str, "folds": list}
FOLD_KEYS = {"name": str, "weights": str, "arch": dict, "img_size": int, "mean": list, "std": list, "tta": list,
             "amp": str}
MAX_IMG_SIZE = 4096


def check_bundle_json(meta: dict, path: Path) -> None:
    """bundle.json against its schema (`TOP_KEYS`, `MEMBER_KEYS`, `FOLD_KEYS` and their values); a BundleError
    naming the key and what is wrong. The fitted blend is checked by `FittedBlend.from_json`."""
    def fail(where: str, what: str):
        raise BundleError(f"{path}: {where} {what}; export the bundle again")

    _check_keys(meta, TOP_KEYS, TOP_REQUIRED, "the bundle", fail, strict=True)
    classes = meta["classes"]
    if not classes or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        fail("key 'classes'", "must be a list of distinct class names")
    if not all(isinstance(n, str) for n in meta.get("notes") or []):
        fail("key 'notes'", "must be a list of str")
    if not meta["members"]:
        fail("key 'members'", "is empty")
    for i, m in enumerate(meta["members"]):
        _check_keys(m, MEMBER_KEYS, tuple(MEMBER_KEYS), f"members[{i}]", fail, strict=True)
        if not m["folds"]:
            fail(f"member {m['name']!r}", "has no folds")
        for j, f in enumerate(m["folds"]):
            where = f"member {m['name']!r} fold {j}"
            _check_keys(f, FOLD_KEYS, tuple(FOLD_KEYS), where, fail, strict=False)
            if not 1 <= f["img_size"] <= MAX_IMG_SIZE:
                fail(f"{where} key 'img_size'", f"must be in [1, {MAX_IMG_SIZE}], got {f['img_size']}")
            for key, low in (("mean", -math.inf), ("std", 0.0)):
                v = f[key]
                if len(v) != 3 or not all(_number(x) and x > low for x in v):
                    fail(f"{where} key {key!r}", f"must be 3 finite numbers{' > 0' if key == 'std' else ''}, got {v}")
            bad = [v for v in f["tta"] if v not in TTA_VIEW_NAMES] if f["tta"] else ["(none)"]
            if bad:
                fail(f"{where} key 'tta'", f"has view {bad[0]!r}, not one of {', '.join(TTA_VIEW_NAMES)}")
            if f["amp"] not in CHOICES["amp"]:
                fail(f"{where} key 'amp'", f"is {f['amp']!r}, not one of {', '.join(sorted(CHOICES['amp']))}")
            if not all(isinstance(k, str) for k in f["arch"]):
                fail(f"{where} key 'arch'", "must have text keys")
            n = f["arch"].get("num_classes", len(classes))
            if n != len(classes) or isinstance(n, bool):
                fail(f"{where} key 'arch'", f"has num_classes {n!r} for the bundle's {len(classes)} classes")
    names = [m["name"] for m in meta["members"]]
    if len(set(names)) != len(names):
        fail("key 'members'", "names a member twice")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_keys(d, schema: dict, required: tuple, where: str, fail, strict: bool) -> None:
    if not isinstance(d, dict):
        fail(where, f"must be an object, got {type(d).__name__}")
    missing = [k for k in required if k not in d]
    if missing:
        fail(where, f"lacks key {missing[0]!r}")
    for key, value in d.items():
        want = schema.get(key)
        if want is None:
            if strict:
                fail(where, f"has unknown key {key!r} (keys: {', '.join(schema)})")
        elif not isinstance(value, want) or (isinstance(value, bool) and want is not bool):
            fail(f"{where} key {key!r}", f"must be a {'JSON object' if want is dict else want.__name__}, "
                                         f"got {type(value).__name__}")


def _tensors(folder: Path, rel: str, path: Path, member: str) -> dict:
    """The tensors of the bundle's safetensors file `rel`; a BundleError naming it if it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = _bundled(folder, rel, path, member)
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise BundleError(f"{path}: weights {rel!r} of member {member!r} are not a safetensors file ({reason}); "
                          f"export the bundle again") from None


def _bundled(folder: Path, rel: str, path: Path, member: str) -> Path:
    file = (folder / rel).resolve()
    if not file.is_relative_to(folder.resolve()) or not file.is_file():
        raise BundleError(f"{path}: weights {rel!r} of {member} are missing from the bundle")
    return file


# ----------------------------------------------------------------------------- CLI hooks
