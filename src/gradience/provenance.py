"""What is needed to rerun a run: versions, device, git revision."""

from __future__ import annotations

import platform
import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version


@cache
def git_revision() -> str:
    """``HEAD`` (with ``-dirty`` if the tree has changes), or ``unknown`` outside a git checkout."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout
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
