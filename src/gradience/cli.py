"""gradience: the pipeline's stages, profiles, data and checks.

Each study is two DVC stages: `gradience train STUDY` (the grid of runs -> tables) and
`gradience report STUDY` (the notebook -> reports/STUDY/). `dvc repro` runs both, when stale.
"""

from __future__ import annotations

import argparse
import sys

from gradience.config import PARAMS_FILE, ParamsError

COMMANDS = {
    "train": "run a study's grid of runs and write reports/STUDY/tables/ (stage STUDY_runs)",
    "report": "execute a study's notebook on its tables into reports/STUDY/ (stage STUDY)",
    "run": "train then report; without STUDY, list the studies",
    "check": "validate params.yaml (every section) without running anything",
    "profile": "rewrite params.yaml from a profile: default, smoke or paper",
    "data": "rebuild data/ deterministically (--verify: check it against data.dvc)",
    "verify": "compare reruns' metrics.json with the committed ones (exit 1 if a verdict flips)",
    "pipeline": "regenerate dvc.yaml from the studies and their import closures",
    "stages": "list the studies",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradience", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ("train", "report", "run"):
        cmd = sub.add_parser(name, help=COMMANDS[name], description=COMMANDS[name])
        cmd.add_argument("study", nargs="?" if name == "run" else None)
        cmd.add_argument("--params", default=PARAMS_FILE)
        cmd.add_argument("--quiet", action="store_true", help="no progress output")
    check = sub.add_parser("check", help=COMMANDS["check"], description=COMMANDS["check"])
    check.add_argument("--params", default=PARAMS_FILE)
    prof = sub.add_parser("profile", help=COMMANDS["profile"], description=COMMANDS["profile"])
    prof.add_argument("name")
    prof.add_argument("--params", default=PARAMS_FILE)
    data = sub.add_parser("data", help=COMMANDS["data"], description=COMMANDS["data"])
    data.add_argument("--out", default="data")
    data.add_argument("--verify", action="store_true", help="check the rebuilt folder against data.dvc")
    pipe = sub.add_parser("pipeline", help=COMMANDS["pipeline"], description=COMMANDS["pipeline"])
    pipe.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml differs, write nothing")
    ver = sub.add_parser("verify", help=COMMANDS["verify"], description=COMMANDS["verify"])
    ver.add_argument("stages", nargs="*", help="studies to check (default: every report present)")
    ver.add_argument("--ref", default="HEAD", help="git revision holding the committed metrics")
    sub.add_parser("stages", help=COMMANDS["stages"], description=COMMANDS["stages"])
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except (ParamsError, KeyError, ValueError, FileNotFoundError) as exc:
        print(f"gradience: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2


def _train(study: str, params: str) -> None:
    from gradience.studies.base import load_params, train

    print(train(study, load_params(study, path=params), f"reports/{study}"))


def _report(study: str, params: str, quiet: bool) -> int:
    from gradience.runner import StageFailed, configure_logging, run_report

    if not quiet:
        configure_logging()
    try:
        print(run_report(study, params_path=params, progress=not quiet))
    except StageFailed as exc:
        print(f"gradience: {exc}", file=sys.stderr)
        return 1
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    from gradience.studies import STAGES

    if args.command in ("stages",) or (args.command == "run" and args.study is None):
        print("\n".join(STAGES))
    elif args.command == "train":
        _train(args.study, args.params)
    elif args.command == "report":
        return _report(args.study, args.params, args.quiet)
    elif args.command == "run":
        _train(args.study, args.params)
        return _report(args.study, args.params, args.quiet)
    elif args.command == "check":
        from gradience.studies.base import load_params

        for stage in STAGES:
            load_params(stage, path=args.params)
        print(f"{args.params}: all {len(STAGES)} sections are valid")
    elif args.command == "profile":
        from gradience.profiles import write_profile

        print(f"wrote {write_profile(args.name, args.params)} (profile {args.name})")
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
