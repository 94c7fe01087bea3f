"""The init stage: fold configs written for this data and this machine (`foldblend init`).

It reads the scan and the split (`planning.profile`), takes the preset's candidates for the hardware
(`planning.presets`), times them on real images (`planning.probe`), keeps what fits the time limit
(`planning.budget`), and writes one `folds/<member>.yaml` per member, every value with a comment saying
why, plus `folds/init.json` (the plan: budget, estimates, timings), which the summary reads to report
what was spent. It never writes over a fold config without `--force`.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from datetime import datetime, timezone

import yaml

from foldblend.artifacts import read_json, write_json, write_text
from foldblend.config import ExperimentConfig, config_from_dict, load_config
from foldblend.cpu import threads_for_load
from foldblend.durations import format_duration, parse_duration
from foldblend.paths import Project
from foldblend.planning.budget import Plan, plan_members
from foldblend.planning.presets import DEFAULT_PRESET, PRESETS, Candidate, candidates
from foldblend.planning.probe import PROBE_PASSES, load_warning, machine_load, probe
from foldblend.planning.profile import DataProfile, Hardware, data_profile, detect_hardware
from foldblend.running.fold import fold_threads
from foldblend.safety import remove

COMMENT_COLUMN = 40


def _yaml_value(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def config_text(c: Candidate, header: list[str]) -> str:
    """The fold config as YAML, every key with the reason it was chosen."""
    lines = [f"# {line}" if line else "#" for line in header]
    for key, value in c.values.items():
        entry = f"{key}: {_yaml_value(value)}"
        lines.append(f"{entry:<{COMMENT_COLUMN - 1}} # {c.why[key]}" if c.why.get(key) else entry)
    return "\n".join(lines) + "\n"


def _header(c: Candidate, command: str, profile: DataProfile, hw: Hardware, seconds: float | None) -> list[str]:
    estimate = (f"estimate: {format_duration(seconds)} for all {profile.n_folds} folds (timed on this machine "
                f"by the probe, under its load at the time)" if seconds is not None else
                "estimate: none (not probed)")
    return [f"{c.name} ({c.role}): {c.note}.",
            f"Written by `{command}` for this data and this machine:",
            f"  data: {profile.describe()}",
            f"  machine: {hw.describe()}",
            f"  {estimate}",
            "Edit freely (keys: docs/configs.md); `foldblend init --force` writes init's files again."]


def _command(preset: str, time_limit: str | None, device: str) -> str:
    return "foldblend init" + f" --preset {preset}" + (f" --time-limit {time_limit}" if time_limit else "") \
        + (f" --device {device}" if device != "auto" else "")


def existing_configs(project: Project) -> list[str]:
    return sorted(p.name for p in project.folds_dir.glob("*.yaml"))


def read_init_record(project: Project) -> dict | None:
    return read_json(project.init_record)


def run_init(project: Project, preset: str = DEFAULT_PRESET, time_limit: str | None = None, device: str = "auto",
             online: bool | None = None, force: bool = False, do_probe: bool = True,
             hardware: Hardware | None = None, progress: bool = True) -> dict:
    """Write fold configs for this data and machine; returns the record written to folds/init.json."""
    budget = parse_duration(time_limit) if time_limit is not None else None
    if budget is not None:  # read back as understood: 1h30 is 1h30m
        print(f"time limit: {format_duration(budget)} ({budget:.0f} s) from --time-limit {time_limit}")
    present = existing_configs(project)
    if present and not force:
        raise ValueError(f"{project.rel(project.folds_dir)}/ already holds fold configs ({', '.join(present)}): "
                         f"init writes none over them; train those, or rerun with --force to write init's "
                         f"configs (files of the same names are replaced)")
    profile = data_profile(project)
    hw = hardware or detect_hardware(device, online)
    cands = candidates(profile, hw, preset)
    command = _command(preset, time_limit, device)
    print(f"{command}\n  data: {profile.describe()}\n  machine: {hw.describe()}")

    timings, probe_s, load = None, 0.0, None
    if do_probe and hw.here:
        t0 = time.perf_counter()
        load = machine_load()
        # timed at the threads a fold trains with: the config's, and under a time limit (whose run depends on
        # the machine's speed anyway) only the cores other processes leave free, as the train stage does
        threads = ExperimentConfig.threads
        if budget is not None:
            threads = load["threads"] = threads_for_load(threads, load["others_cpu"], load["cores"])
        with fold_threads(threads):
            timings = probe(cands, profile, hw, progress, passes=1 if budget is not None else PROBE_PASSES)
        probe_s = time.perf_counter() - t0
        print(f"probe: {format_duration(probe_s)} (each candidate timed on a few batches of real train images at "
              f"{threads} torch thread(s); other processes used {load['others_cpu']:.0%} of the CPU)")
        if load_warning(load):
            print(f"WARNING: {load_warning(load)}")
    elif budget is not None:
        raise ValueError("--time-limit needs the probe, which times the device that will train: run init on that "
                         "machine, without --no-probe")
    else:
        print("probe: skipped" + ("" if hw.here else " (the device is not on this machine)")
              + ": epochs are the preset's, with no time estimate")
    plan = plan_members(cands, profile, hw, timings, budget, probe_s)

    written = _write(project, plan, command, profile, hw, force)
    record = _record(project, plan, written, command, preset, profile, hw, timings) | {"load": load}
    write_json(project.init_record, record)
    _print_plan(project, plan, written)
    return record


def _write(project: Project, plan: Plan, command: str, profile: DataProfile, hw: Hardware, force: bool) -> list[str]:
    """Write every member's config (validated first); with --force, remove the configs an earlier init
    wrote that this plan no longer has (a user's own files are never removed)."""
    texts = {}
    for p in plan.members:
        where = f"init's {p.cand.name}"
        config_from_dict({**p.cand.values, "name": p.cand.name}, where)  # a bad choice is a bug: fail before writing
        texts[f"{p.cand.name}.yaml"] = config_text(p.cand, _header(p.cand, command, profile, hw, p.seconds))
    if force:
        earlier = (read_init_record(project) or {}).get("written", [])
        for name in earlier:
            path = project.folds_dir / name
            if name not in texts and path.is_file():
                remove(path, project.folds_dir)  # init.json is a file on disk: never follow it outside folds/
                print(f"removed {project.rel(path)} (written by an earlier init; not in this plan)")
    for name, text in texts.items():
        path = project.folds_dir / name
        write_text(path, text)
        load_config(path)  # what was written reads back as a valid config
    return list(texts)


def _record(project: Project, plan: Plan, written: list[str], command: str, preset: str, profile: DataProfile,
            hw: Hardware, timings) -> dict:
    data = {k: v for k, v in asdict(profile).items() if k != "train_paths"}
    return {
        "command": command, "preset": preset, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "time_limit_s": plan.budget, "usable_s": plan.usable, "probe_s": round(plan.probe_seconds, 1),
        "planned_s": None if plan.seconds is None else round(plan.seconds, 1),
        "data": data, "hardware": asdict(hw), "written": written,
        "members": {p.cand.name: {"file": f"{project.rel(project.folds_dir)}/{p.cand.name}.yaml", "role": p.cand.role,
                                  "model": p.cand.values["model"], "img_size": p.cand.values["img_size"],
                                  "epochs": p.cand.epochs, "min_epochs": p.cand.min_epochs,
                                  "estimate_s": None if p.seconds is None else round(p.seconds, 1),
                                  "parts": p.parts, "timing": timings[p.cand.name].to_dict() if timings else None}
                    for p in plan.members},
        "dropped": [{"name": n, "why": w} for n, w in plan.dropped], "warning": plan.warning,
    }


def _print_plan(project: Project, plan: Plan, written: list[str]) -> None:
    rows = [("member", "role", "model", "size", "epochs", "estimate")]
    for p in plan.members:
        c = p.cand
        rows.append((c.name, c.role, c.values["model"], str(c.values["img_size"]), str(c.epochs) if c.epochs else "-",
                     format_duration(p.seconds) if p.seconds is not None else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)))
    if plan.seconds is not None and plan.budget is None:
        print(f"estimated training: {format_duration(plan.seconds)} (+ the blend, submission and report)")
    elif plan.seconds is not None:
        print(f"estimated training, every member in full: {format_duration(plan.seconds)}; time limit "
              f"{format_duration(plan.budget)}: {format_duration(max(plan.usable, 0))} for training after the probe "
              f"({format_duration(plan.probe_seconds)}) and a reserve for the blend. `foldblend train` holds it: each "
              f"member's trial on fold 0 first, then the time left to those that score best, re-planned after "
              f"every epoch")
    for name, why in plan.dropped:
        print(f"  left out: {name}: {why}")
    if plan.warning:
        print(f"WARNING: {plan.warning}")
    folder = project.rel(project.folds_dir)
    print(f"wrote {', '.join(f'{folder}/{n}' for n in written)} (each value's reason is the comment beside it); "
          f"`foldblend train` trains them, the blend keeps what earns its weight")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=PRESETS, default=DEFAULT_PRESET,
                        help="fast: few, cheap members; medium: adds a pretrained fine-tune and more; best: larger "
                             "sizes, more updates (default: %(default)s)")
    parser.add_argument("--time-limit", default=None, metavar="DURATION",
                        help="fit what follows the split (the probe, training, the blend) into this: 2h, 90m, "
                             "1h30m, or seconds; a timed probe sizes epochs and the number of members")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="the device the configs are for (default: this machine's); cuda without a GPU here "
                             "writes GPU configs untimed")
    online = parser.add_mutually_exclusive_group()
    online.add_argument("--online", dest="online", action="store_true", default=None,
                        help="use timm hub weights (default: when the hub answers)")
    online.add_argument("--offline", dest="online", action="store_false", help="use packaged weights only")
    parser.add_argument("--no-probe", action="store_true", help="write the preset's epochs without timing anything")
    parser.add_argument("--force", action="store_true", help="write even though folds/ holds fold configs "
                                                             "(same names are replaced)")
    parser.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace, project: Project) -> None:
    run_init(project, preset=args.preset, time_limit=args.time_limit, device=args.device, online=args.online,
             force=args.force, do_probe=not args.no_probe, progress=not args.quiet)
