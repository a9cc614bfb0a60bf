"""gradience: the pipeline's stages, profiles, data and checks.

Each study is two DVC stages: STUDY_runs (the grid of runs -> reports/STUDY/tables/) and STUDY
(the notebook -> reports/STUDY/). `dvc repro` runs both when stale; `gradience train|report|run
STUDY` runs them by hand. DVC calls the stages' own modules, not this CLI, so editing it makes
nothing stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gradience import __version__
from gradience.config import PARAMS_FILE, ParamsError
from gradience.studies.registry import QUESTIONS, STAGES

COMMANDS = {
    "train": "run a study's grid of runs and write reports/STUDY/tables/ (stage STUDY_runs)",
    "report": "execute a study's notebook on its tables into reports/STUDY/ (stage STUDY)",
    "run": "train then report",
    "check": "validate params.yaml (every section) without running anything",
    "profile": "rewrite params.yaml from a profile: default, smoke or paper",
    "data": "rebuild data/ deterministically (--verify: check it against data.dvc)",
    "verify": "compare reruns' metrics.json with the committed ones (exit 1 if a verdict flips)",
    "pipeline": "regenerate dvc.yaml from the studies and their import closures",
    "stages": "list the studies: question and the committed report's verdict counts",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradience", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"gradience {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ("train", "report", "run"):
        cmd = sub.add_parser(name, help=COMMANDS[name], description=COMMANDS[name])
        cmd.add_argument("study", choices=STAGES, metavar="STUDY", help=f"one of: {', '.join(STAGES)}")
        cmd.add_argument("--params", default=PARAMS_FILE)
        cmd.add_argument("--quiet", action="store_true", help="no progress output")
    check = sub.add_parser("check", help=COMMANDS["check"], description=COMMANDS["check"])
    check.add_argument("--params", default=PARAMS_FILE)
    prof = sub.add_parser("profile", help=COMMANDS["profile"], description=COMMANDS["profile"])
    prof.add_argument("name")
    prof.add_argument("--params", default=PARAMS_FILE)
    prof.add_argument("--estimate", action=argparse.BooleanOptionalAction, default=None,
                      help="print the profile's runs, steps, FLOPs and H100 estimate (default: on for paper)")
    prof.add_argument("--data", default="data", help="the data folder the jobs read (default: data)")
    data = sub.add_parser("data", help=COMMANDS["data"], description=COMMANDS["data"])
    data.add_argument("--out", default="data")
    data.add_argument("--verify", action="store_true", help="check the rebuilt folder against data.dvc")
    pipe = sub.add_parser("pipeline", help=COMMANDS["pipeline"], description=COMMANDS["pipeline"])
    pipe.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml differs, write nothing")
    ver = sub.add_parser("verify", help=COMMANDS["verify"], description=COMMANDS["verify"])
    ver.add_argument("stages", nargs="*", metavar="STUDY", help="studies to check (default: every report present)")
    ver.add_argument("--ref", default="HEAD", help="git revision holding the committed metrics")
    ver.add_argument("--record", metavar="ABOUT", help="the working tree is a rerun of --ref's code on another "
                     "machine: write how far each number moved and which verdicts flipped to claims/reruns.json "
                     "(ABOUT: the two machines and commits), which widens tolerances and marks those Findings rows")
    sub.add_parser("stages", help=COMMANDS["stages"], description=COMMANDS["stages"])
    args = parser.parse_args(argv)
    unknown = [s for s in getattr(args, "stages", []) if s not in STAGES]
    if unknown:
        parser.error(f"unknown studies {unknown}; studies: {', '.join(STAGES)}")
    try:
        return _dispatch(args)
    except (ParamsError, KeyError, ValueError, FileNotFoundError) as exc:
        print(f"gradience: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2


def check_sections(path: str) -> None:
    """Every section of ``path`` valid (runs and report keys), and no section that is not a study."""
    from gradience.config import read_params_file
    from gradience.studies.notebook import load_params

    unknown = sorted(set(read_params_file(path)) - set(STAGES))
    if unknown:
        raise ParamsError(f"{path}: unknown sections {unknown}; stages: {', '.join(STAGES)}")
    for stage in STAGES:
        load_params(stage, path=path)


def _stage_argv(args: argparse.Namespace) -> list[str]:
    return [args.study, "--params", args.params] + (["--quiet"] if args.quiet else [])


def _train(args: argparse.Namespace) -> int:
    """The training stage's own command, after every section of the file is checked."""
    from gradience.studies import grid

    check_sections(args.params)
    return grid.main(_stage_argv(args))


def _report(args: argparse.Namespace) -> int:
    """The report stage's own command, after every section of the file is checked."""
    from gradience import runner

    check_sections(args.params)
    return runner.main(_stage_argv(args))


def stage_lines(reports: str | Path = "reports") -> list[str]:
    """One line per study: its name, its question and its report's verdict counts (if it has one)."""
    from gradience.reporting import VERDICTS

    lines = []
    for stage in STAGES:
        path = Path(reports) / stage / "metrics.json"
        counts = json.loads(path.read_text()).get("findings", {}) if path.exists() else None
        said = ("no report yet" if counts is None
                else ", ".join(f"{int(counts.get(v, 0))} {v}" for v in VERDICTS))
        lines.append(f"{stage:<20} {QUESTIONS[stage]}\n{'':<20} [{said}]")
    return lines


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "stages":
        print("\n".join(stage_lines()))
    elif args.command == "train":
        return _train(args)
    elif args.command == "report":
        return _report(args)
    elif args.command == "run":
        return _train(args) or _report(args)
    elif args.command == "check":
        check_sections(args.params)
        print(f"{args.params}: all {len(STAGES)} sections are valid")
    elif args.command == "profile":
        from gradience.profiles import write_profile

        print(f"wrote {write_profile(args.name, args.params)} (profile {args.name})")
        if args.estimate or (args.estimate is None and args.name == "paper"):
            from gradience.cost import format_profile

            print(format_profile(args.name, args.data))
    elif args.command == "data":
        from gradience.data import DataMismatch, build, verify

        files = build(args.out)
        print(f"wrote {len(files)} files under {args.out}/")
        if args.verify:
            try:
                print(f"{args.out}/ matches data.dvc (md5 {verify(args.out)})")
            except DataMismatch as exc:
                print(f"gradience: {exc}", file=sys.stderr)
                return 1
    elif args.command == "verify":
        from gradience import verify

        if args.record:
            stages = args.stages or [s for s in STAGES if Path(verify.metrics_path(s)).exists()]
            print(verify.record(stages, args.ref, args.record))
            return 0
        return verify.main(args.stages, args.ref)
    elif args.command == "pipeline":
        from gradience.pipeline import DVC_YAML, render

        text = render()
        if args.check:
            same = DVC_YAML.exists() and DVC_YAML.read_text() == text
            print(f"{DVC_YAML} is {'up to date' if same else 'stale: run `gradience pipeline`'}")
            return 0 if same else 1
        DVC_YAML.write_text(text)
        print(f"wrote {DVC_YAML}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
