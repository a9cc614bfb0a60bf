"""The static import closure of ``gradience`` modules: the source files a command depends on.

Every ``import`` inside ``src/gradience`` is followed (module level and inside functions, relative
ones included), and each package's ``__init__`` is included. :mod:`gradience.pipeline` lists these
files as a stage's DVC deps; :mod:`gradience.runstore` fingerprints them, so a stored run is reused
only by the code that trained it. It imports nothing of the project, so it sits in every closure
without pulling anything in.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def module_path(name: str) -> Path | None:
    """The file of module ``gradience.x.y`` (``x/y.py`` or ``x/y/__init__.py``), if it exists."""
    parts = name.split(".")
    if parts[0] != "gradience":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(tree: ast.AST, name: str, is_package: bool) -> set[str]:
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(anchor + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)  # submodules imported by name
    return {m for m in found if m.startswith("gradience")}


def closure(roots: list[str], source_files: list[Path] = ()) -> set[Path]:
    """Files of every ``gradience`` module reachable from ``roots`` and the imports of ``source_files``."""
    todo: list[str] = list(roots)
    for file in source_files:
        todo.extend(_imported(ast.parse(Path(file).read_text()), "__main__", False))
    seen: set[str] = set()
    files: set[Path] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_path(name)
        if path is None:
            continue
        files.add(path)
        parent = name.rpartition(".")[0]
        if parent:
            todo.append(parent)
        todo.extend(_imported(ast.parse(path.read_text()), name, path.name == "__init__.py"))
    return files
