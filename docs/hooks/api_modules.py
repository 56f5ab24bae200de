"""MkDocs hook: the API pages list every public module of a package, found on disk, so none can be left out.

A page line ``<!-- api-modules: fewshot.learners -->`` becomes one mkdocstrings block per module of that package:
the package and its sub-packages show their docstring, each module its docstring and public members. A module is
public unless its name starts with an underscore. ``tests/test_docs.py`` checks that every public module of
``fewshot`` and ``episodes`` but the command-line layer (:data:`APP_LAYER`) is on some page.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- api-modules: ([\w.]+) -->$", flags=re.M)
# The command-line layer, documented on the command-line page rather than as an API.
APP_LAYER = frozenset({"fewshot", "fewshot.allocator", "fewshot.app_config", "fewshot.cli", "fewshot.config_types", "fewshot.configs",
                       "fewshot.data_cli", "fewshot.hydra_app"})


def public_modules(package: str, root: Path = ROOT) -> list[tuple[str, bool]]:
    """(dotted name, is a package) of ``package`` and every public module below it, parents before children, each
    package's own modules (sorted by name) before its sub-packages."""
    folder = root.joinpath(*package.split("."))
    if not (folder / "__init__.py").is_file():
        raise ValueError(f"{package} is not a package under {root} (no {folder / '__init__.py'})")
    found = [(package, True)]
    modules = sorted(p.stem for p in folder.glob("*.py") if not p.name.startswith("_"))
    found += [(f"{package}.{name}", False) for name in modules]
    for sub in sorted(p for p in folder.iterdir() if (p / "__init__.py").is_file() and not p.name.startswith("_")):
        found += public_modules(f"{package}.{sub.name}", root)
    return found


def directives(package: str, root: Path = ROOT) -> str:
    """The mkdocstrings blocks of :func:`public_modules`: packages show their docstring only (their names are
    re-exports, documented where they are defined), modules their members too."""
    blocks = []
    for name, is_package in public_modules(package, root):
        options = "\n    options:\n      members: false" if is_package else ""
        blocks.append(f"::: {name}{options}")
    return "\n\n".join(blocks) + "\n"


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return MARKER.sub(lambda match: directives(match.group(1)), markdown)
