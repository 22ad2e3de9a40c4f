"""Import closures of the project's modules, read from the source as text (ast), never imported.

The closure of a module is every project file that importing it may run: modules
reached through `import` / `from ... import` statements, lazy ones inside functions
included (they run too), and the package `__init__.py` files on the way. Third-party
modules are not followed. dag.py derives each DVC stage's code deps from it and
evaluation.fingerprint keys the grid's cell cache by its digest.
"""
from __future__ import annotations

import ast
import hashlib
from pathlib import Path


def module_file(name: str, roots: list[Path]) -> Path | None:
    """The file that `import name` runs, if it is a project module under one of `roots`."""
    parts = name.split(".")
    for root in roots:
        for candidate in (root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")):
            if candidate.is_file():
                return candidate
    return None


def _package_of(path: Path, root: Path) -> list[str]:
    """The dotted package a module file belongs to (what a relative import is relative to)."""
    return list(path.relative_to(root).parts[:-1])  # a/b/c.py and a/b/__init__.py both belong to a.b


def imported_names(path: Path, root: Path) -> set[str]:
    """Every module name `path` may import, parents included (importing a.b.c runs a and a.b first)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _package_of(path, root)
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return {".".join(name.split(".")[:i]) for name in names for i in range(1, name.count(".") + 2)}


def closure(module: str, roots: list[Path]) -> dict[Path, Path | None]:
    """Project file -> the project file that first imported it (None for the module itself), breadth first."""
    start = module_file(module, roots)
    if start is None:
        raise ValueError(f"{module}: not a project module under {', '.join(map(str, roots))}")
    seen: dict[Path, Path | None] = {start: None}
    queue = [start]
    for name in (".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)):
        if (parent := module_file(name, roots)) is not None:  # `python -m a.b` imports package a first
            seen.setdefault(parent, start)
            queue.append(parent)
    while queue:
        path = queue.pop(0)
        root = next(r for r in roots if path.is_relative_to(r))
        for name in sorted(imported_names(path, root)):
            found = module_file(name, roots)
            if found is not None and found not in seen:
                seen[found] = path
                queue.append(found)
    return seen


def code_digest(module: str, roots: list[Path]) -> str:
    """A hash of every file in the import closure of `module` (names and contents): changes with any edit it runs."""
    digest = hashlib.sha256()
    for path in sorted(closure(module, roots)):
        root = next(r for r in roots if path.is_relative_to(r))
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
