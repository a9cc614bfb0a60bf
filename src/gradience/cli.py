"""``gradience run STAGE`` · ``gradience profile NAME`` · ``gradience data`` · ``gradience stages``."""

from __future__ import annotations

import argparse
import sys

from gradience.config import PARAMS_FILE, ParamsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradience", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute a stage's notebook into reports/<stage>/")
    run.add_argument("stage")
    run.add_argument("--params", default=PARAMS_FILE)
    run.add_argument("--quiet", action="store_true", help="no progress output")
    check = sub.add_parser("check", help="validate params.yaml (every stage) without running")
    check.add_argument("--params", default=PARAMS_FILE)
    prof = sub.add_parser("profile", help="write params.yaml from a profile: default, smoke, paper")
    prof.add_argument("name")
    prof.add_argument("--params", default=PARAMS_FILE)
    data = sub.add_parser("data", help="rebuild data/ deterministically")
    data.add_argument("--out", default="data")
    data.add_argument("--verify", action="store_true", help="check the rebuilt folder against data.dvc")
    sub.add_parser("stages", help="list the stages")
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except (ParamsError, KeyError, ValueError, FileNotFoundError) as exc:
        print(f"gradience: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from gradience.runner import StageFailed, configure_logging, run_stage

        if not args.quiet:
            configure_logging()
        try:
            print(run_stage(args.stage, params_path=args.params, progress=not args.quiet))
        except StageFailed as exc:
            print(f"gradience: {exc}", file=sys.stderr)
            return 1
    elif args.command == "check":
        from gradience.config import load_stage_params
        from gradience.studies import STAGES

        for stage in STAGES:
            load_stage_params(stage, path=args.params)
        print(f"{args.params}: all {len(STAGES)} stage sections are valid")
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
    elif args.command == "stages":
        from gradience.studies import STAGES

        print("\n".join(STAGES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
