"""A blend as data: how it is fitted (`BlendOptions`) and what was fitted (`FittedBlend`), to and from JSON.

`blend` writes the fitted blend into oof/_blend/blend.json (key `pipeline`) and `export` into a bundle's
bundle.json (key `blend`); `predict`, `evaluate` and `serve` read it back and apply it with
`pipeline.apply_blend`, the function that made the blend's own test predictions. Arrays are written as
lists of floats (exact: JSON floats round-trip), the stacker as its coefficients.

    {"format": "foldblend-blend/1",
     "options": {"method": "greedy", "metric": "macro_f1", "tta": "weighted", "fold_combine": "prob_mean", ...},
     "members": ["cnn_small", "effnet_b0"],          # the order of every per-member list below
     "identity_weights": [0.7, null],                 # weight of the un-augmented view; null: views averaged
     "temperatures": [1.0, 1.0], "weights": [0.25, 0.75],
     "stacker": null,                                 # --method stack: {"classes", "coef", "intercept"}
     "calibration": 1.0, "biases": null}              # biases: one per class, added to log-probabilities
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from foldblend.ensemble import methods as E
from foldblend.metrics import HIGHER_IS_BETTER, METRICS

FORMAT = "foldblend-blend/1"
TTA_MODES = ("mean", "weighted")
FOLD_COMBINES = ("prob_mean", "logit_mean")
WEIGHTED_METHODS = ("mean", "scipy", "greedy")  # combined by `weights` alone: a zero-weight member is not needed


def _option(default, help_text: str, choices: tuple | None = None):
    """A blend option; its metadata is the command line's help and choices (`stages.blend` reads them)."""
    return field(default=default, metadata={"help": help_text, "choices": choices})


@dataclass(frozen=True)
class BlendOptions:
    method: str = _option("mean", "how members are combined", E.COMBINE_METHODS)
    metric: str = _option("macro_f1", "what greedy selection, bias tuning and the overfit warning optimise",
                          tuple(HIGHER_IS_BETTER))
    tta: str = _option("mean", "mean of view probabilities, or the identity view's weight tuned on OOF", TTA_MODES)
    fold_combine: str = _option("prob_mean", "how the fold models' test predictions are averaged", FOLD_COMBINES)
    temperature: bool = _option(False, "temperature-scale each member on OOF")
    calibrate: bool = _option(False, "temperature-scale the blend on OOF")
    bias: bool = _option(False, "tune per-class decision biases for --metric")
    rounds: int = _option(100, "greedy selection rounds")
    power: float = _option(2.0, "exponent of --method power")
    greedy_init: int = _option(5, "greedy selection starts from the best few members, at most this many")
    shift_weights: str = _option("auto", "fit on OOF rows weighted to look like the test (importance weights): auto = "
                                 "when the scan warns that CV is optimistic", ("auto", "on", "off"))
    select: str = _option("auto", "auto: write the fitted blend, the plain mean or one member, whichever is estimated "
                          "best on the test beyond the noise; blend: always the fitted blend", ("auto", "blend"))

    def __post_init__(self):
        for f in fields(self):
            allowed = f.metadata["choices"]
            if allowed and getattr(self, f.name) not in allowed:
                raise ValueError(f"{f.name}={getattr(self, f.name)!r} is not one of {', '.join(allowed)}")
        if self.bias and self.metric not in METRICS:
            raise ValueError(f"bias tuning needs a decision metric ({', '.join(METRICS)}), not {self.metric!r}")

    @property
    def is_fitted(self) -> bool:
        """Whether anything is learned from labels (if not, in-sample already is the honest number)."""
        return (self.method in ("scipy", "greedy", "stack") or self.tta == "weighted" or self.temperature
                or self.calibrate or self.bias)


@dataclass
class FittedBlend:
    options: BlendOptions
    members: list[str]                  # (K,) names, the order of every per-member array
    identity_weights: list              # (K,) weight of view 0 against the others; None = plain mean
    temperatures: np.ndarray            # (K,) per member, 1.0 = unchanged
    weights: np.ndarray                 # (K,) member weights (stack: coefficient shares)
    stacker: object | None = None
    calibration: float = 1.0            # temperature after combining
    biases: np.ndarray | None = None    # (C,) added to log-probabilities before argmax

    @classmethod
    def unfitted(cls, members: list[str], options: BlendOptions | None = None) -> FittedBlend:
        """Nothing learned yet: views averaged, no temperatures, equal weights."""
        k = len(members)
        return cls(options or BlendOptions(), list(members), [None] * k, np.ones(k), np.full(k, 1.0 / k))

    def used_members(self) -> list[str]:
        """The members whose predictions the blend reads (a weighted mean skips zero weights)."""
        if self.options.method not in WEIGHTED_METHODS:
            return list(self.members)
        return [n for n, w in zip(self.members, self.weights) if w > 0]

    def only(self, names: list[str]) -> FittedBlend:
        """The same blend on `names` alone: only members it does not read (`used_members`) may be left out."""
        missing = sorted(set(self.used_members()) - set(names))
        if missing:
            raise ValueError(f"the blend needs member {missing[0]!r} (method {self.options.method})")
        unknown = sorted(set(names) - set(self.members))
        if unknown:
            raise ValueError(f"member {unknown[0]!r} is not in the blend ({', '.join(self.members)})")
        idx = [self.members.index(n) for n in names]
        return replace(self, members=list(names), identity_weights=[self.identity_weights[i] for i in idx],
                       temperatures=self.temperatures[idx], weights=self.weights[idx])

    def to_json(self) -> dict:
        """JSON types only; `from_json` gives back an equal blend (floats round-trip exactly)."""
        return {"format": FORMAT, "options": asdict(self.options), "members": list(self.members),
                "identity_weights": [None if w is None else float(w) for w in self.identity_weights],
                "temperatures": [float(t) for t in self.temperatures], "weights": [float(w) for w in self.weights],
                "stacker": None if self.stacker is None else E.stacker_to_json(self.stacker),
                "calibration": float(self.calibration),
                "biases": None if self.biases is None else [float(b) for b in self.biases]}

    @classmethod
    def from_json(cls, data: dict) -> FittedBlend:
        """The blend `to_json` wrote; ValueError naming what is wrong (an unknown method, a missing key, ...)."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"fitted blend format {found!r} is not {FORMAT!r}")
        extra = sorted(set(data) - JSON_KEYS)
        if extra:
            raise ValueError(f"fitted blend: unknown key {extra[0]!r} (keys: {', '.join(sorted(JSON_KEYS))})")
        try:
            options = dict(data["options"])
            unknown = sorted(set(options) - {f.name for f in fields(BlendOptions)})
            if unknown:
                raise ValueError(f"unknown blend option {unknown[0]!r}")
            _check_option_types(options)
            for key in ("members", "identity_weights", "temperatures", "weights", "biases"):
                if not isinstance(data[key], list) and not (key == "biases" and data[key] is None):
                    raise ValueError(f"fitted blend: {key!r} must be a list, got {type(data[key]).__name__}")
            if not all(isinstance(n, str) for n in data["members"]):
                raise ValueError("fitted blend: 'members' must be a list of names")
            model = cls(BlendOptions(**options), [str(n) for n in data["members"]],
                        [None if w is None else float(w) for w in data["identity_weights"]],
                        np.asarray(data["temperatures"], dtype=np.float64),
                        np.asarray(data["weights"], dtype=np.float64),
                        None if data["stacker"] is None else E.stacker_from_json(data["stacker"]),
                        float(data["calibration"]),
                        None if data["biases"] is None else np.asarray(data["biases"], dtype=np.float64))
        except KeyError as e:
            raise ValueError(f"fitted blend without {e.args[0]!r}") from None
        except (TypeError, AttributeError) as e:
            raise ValueError(f"fitted blend unreadable ({e})") from None
        k = len(model.members)
        if not k or {len(model.identity_weights), len(model.temperatures), len(model.weights)} != {k} or \
                model.temperatures.ndim != 1 or model.weights.ndim != 1 or (model.biases is not None
                                                                             and model.biases.ndim != 1):
            raise ValueError(f"fitted blend: {k} members but per-member values of other lengths")
        if (model.options.method == "stack") != (model.stacker is not None):
            raise ValueError(f"fitted blend: method {model.options.method!r} "
                             f"{'without' if model.stacker is None else 'with'} a stacker")
        _check_values(model)
        return model


JSON_KEYS = {"format"} | {f.name for f in fields(FittedBlend)}  # what to_json writes


def _check_option_types(options: dict) -> None:
    """Each option of the type its default has (an int where a float is expected is fine)."""
    for f in fields(BlendOptions):
        if f.name not in options:
            continue
        value, want = options[f.name], type(f.default)
        ok = (isinstance(value, bool) if want is bool else
              isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) if want is float
              else isinstance(value, want) and not isinstance(value, bool))
        if not ok:
            raise ValueError(f"blend option {f.name!r} must be a {want.__name__}, got {value!r}")


def _check_values(model: FittedBlend) -> None:
    """Numbers a blend can apply: finite weights >= 0 (not all 0), temperatures > 0, view weights in [0, 1]."""
    def bad(values, ok) -> str | None:
        found = [v for v in np.asarray(values, dtype=np.float64).ravel() if not (np.isfinite(v) and ok(v))]
        return None if not found else repr(float(found[0]))

    checks = [("member weight", model.weights, lambda v: v >= 0, "finite and >= 0"),
              ("temperature", model.temperatures, lambda v: v > 0, "finite and > 0"),
              ("calibration temperature", [model.calibration], lambda v: v > 0, "finite and > 0"),
              ("identity view weight", [w for w in model.identity_weights if w is not None], lambda v: 0 <= v <= 1,
               "in [0, 1]"),
              ("class bias", [] if model.biases is None else model.biases, lambda v: True, "finite")]
    for what, values, ok, rule in checks:
        found = bad(values, ok)
        if found is not None:
            raise ValueError(f"fitted blend: {what} {found} (each must be {rule})")
    if model.options.method in WEIGHTED_METHODS and not model.weights.sum() > 0:
        raise ValueError(f"fitted blend: every member weight is 0 (method {model.options.method})")
