"""Profiles: named overlays of params.yaml (profiles/<name>.yaml), and switching between them.

    python -m maskgit_inpaint.profiles              # list them, the active one marked
    python -m maskgit_inpaint.profiles use lab03    # set `profile: lab03` in params.yaml, comments kept

`make run PROFILE=lab03` does the latter, then `dvc repro`; `dvc exp run -S profile=lab03`
is the DVC-native equivalent. The overlay is applied by config.load; this module only
edits the one `profile:` line, after checking that the result loads.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from maskgit_inpaint import config

PROFILE_LINE = re.compile(r"^profile:.*$", re.MULTILINE)


def _with_profile(name: str, params_file: Path, keep: bool) -> config.Params:
    """The params of `params_file` under profile `name`; `keep`: make that the file's profile (only if it loads)."""
    text = params_file.read_text()
    if not PROFILE_LINE.search(text):
        raise config.ParamsError(f"{params_file}: no top-level `profile:` line to set")
    trial = params_file.with_name(f".{params_file.name}.{os.getpid()}.tmp")  # beside it: profiles/ resolves the same
    trial.write_text(PROFILE_LINE.sub(f"profile: {name}", text, count=1))
    try:
        params = config.load(trial)
        if keep:
            os.replace(trial, params_file)
    except config.ParamsError as error:  # name the user's file, not the trial copy
        raise config.ParamsError(str(error).replace(str(trial), str(params_file))) from None
    finally:
        trial.unlink(missing_ok=True)
    return params


def use(name: str, params_file: Path | str = config.DEFAULT_PARAMS) -> config.Params:
    """Make `name` the active profile of `params_file`; raises ParamsError (file unchanged) when it does not load."""
    return _with_profile(name, Path(params_file), keep=True)


def load_profile(name: str, params_file: Path | str = config.DEFAULT_PARAMS) -> config.Params:
    """The params `params_file` would have under profile `name`, leaving the file as it is."""
    return _with_profile(name, Path(params_file), keep=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maskgit_inpaint.profiles", description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=config.DEFAULT_PARAMS)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("use", help="make a profile the active one").add_argument("name")
    args = parser.parse_args(argv)
    try:
        if args.command == "use":
            params = use(args.name, args.params)
            print(f"profile {params.profile}: {config.profile_file(args.params, params.profile)} over {args.params}; "
                  f"`dvc repro` (or `make run`) runs it")
            return 0
        active = config.load(args.params).profile
        for name in config.profile_names(args.params):
            print(f"{'*' if name == active else ' '} {name}")
        return 0
    except config.ParamsError as error:
        print(error, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
