"""What is needed to rerun a run: versions, device, git revision."""

from __future__ import annotations

import platform
import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


@cache
def git_revision() -> str:
    """``HEAD`` of the checkout holding this code (with ``-dirty`` if its tree has changes), or
    ``unknown`` when the code is not in a git checkout. Read where the code is, not in the working
    directory, so that it names the code that trained a run wherever it was started from."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=here).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=here).stdout
        return rev + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@cache
def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("gradience", "torch", "numpy", "transformers", "peft"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out
