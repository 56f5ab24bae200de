"""MkDocs hook: the config reference, generated from ``fewshot/configs/`` at every build so it cannot drift.

A page line ``<!-- config-reference: apps -->`` becomes the apps' top-level keys (``train.yaml`` for
``python3 -m fewshot train``, ``eval.yaml``, ...), ``<!-- config-reference: groups -->`` every option of every
config group but ``experiment/``, and ``<!-- config-reference: experiment -->`` every experiment file (and the bases
they inherit). Each entry shows the
file's leading comment and its keys with their defaults. ``tests/test_docs.py`` checks that the rendered pages name
every YAML file.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import yaml

CONFIGS = Path(__file__).resolve().parents[2] / "fewshot" / "configs"
MARKER = re.compile(r"^<!-- config-reference: (apps|groups|experiment) -->$", flags=re.M)
KEY_LINE = re.compile(r"^( *)([A-Za-z_]\w*):(.*?)(?:\s+#\s*(.*))?$")


def header(path: Path) -> str:
    """The comment lines at the top of a YAML file, joined (``# @package`` directives left out), with ``<``, ``>`` and
    ``&`` escaped so that placeholders such as ``run=<dir>`` show as written."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        if not text.startswith("@package"):
            lines.append(text)
    return html.escape(" ".join(lines), quote=False)


def _flat(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        return [item for key, sub in value.items() for item in _flat(sub, f"{prefix}{key}.")]
    return [(prefix[:-1], value)]


def _value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def keys(path: Path) -> list[str]:
    """``key=default`` for every leaf key of a YAML file (``_target_`` and ``defaults`` left out)."""
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return [f"`{key}={_value(value)}`" for key, value in _flat(document)
            if key != "defaults" and not key.endswith("_target_") and not key.startswith("hydra.")]


def _option(path: Path, group: str) -> str:
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    target = document.get("_target_") or (document.get("loader") or {}).get("_target_")
    parts = [f"- **`{group}={path.stem}`**" + (f" (`{target}`)" if target else "") + f": {header(path)}"]
    defaults = document.get("defaults")
    if defaults:
        items = [", ".join(f"{k}: {v}" for k, v in item.items()) if isinstance(item, dict) else str(item)
                 for item in defaults]
        parts.append("  Defaults: " + ", ".join(f"`{item}`" for item in items) + ".")
    settings = keys(path)
    if settings:
        parts.append("  Keys: " + ", ".join(settings) + ".")
    return "\n".join(parts)


def apps(configs: Path = CONFIGS) -> str:
    """Each app's config (``<app>.yaml``): its comment, and a table of its own top-level keys with their inline
    comments (config groups and ``hydra`` settings left out)."""
    sections = []
    for path in sorted(configs.glob("*.yaml")):
        rows, parent = [], None
        for line in path.read_text(encoding="utf-8").splitlines():
            match = KEY_LINE.match(line)
            if match is None:
                continue
            indent, key, value, comment = match.groups()
            if not indent:
                parent = key
                if key in ("defaults", "hydra"):
                    continue
            elif parent in ("defaults", "hydra") or len(indent) != 2:
                continue
            name = key if not indent else f"{parent}.{key}"
            meaning = html.escape(comment or "", quote=False).replace("|", "\\|")
            rows.append(f"| `{name}` | `{value.strip() or '(keys below)'}` | {meaning} |")
        sections.append(f"### `python3 -m fewshot {path.stem}` ({path.name})\n\n{header(path)}\n\n"
                        "| key | default | meaning |\n"
                        "|---|---|---|\n" + "\n".join(rows))
    return "\n\n".join(sections) + "\n"


def groups(configs: Path = CONFIGS, *, only: str | None = None) -> str:
    """One section per config group (a folder of ``configs``, nested ones such as ``hydra/launcher`` included),
    one entry per option; ``only`` restricts to one group and its sub-folders, else ``experiment`` is left out."""
    sections = []
    for folder in sorted(p for p in configs.rglob("*") if p.is_dir() and any(p.glob("*.yaml"))):
        group = folder.relative_to(configs).as_posix()
        if (only is None and group.split("/")[0] == "experiment") or (
                only is not None and group.split("/")[0] != only):
            continue
        options = sorted(folder.glob("*.yaml"))
        entries = "\n".join(_option(path, group) for path in options)
        sections.append(f"### `{group}/` ({len(options)} option{'s' if len(options) > 1 else ''})\n\n{entries}")
    return "\n\n".join(sections) + "\n"


def render(kind: str, configs: Path = CONFIGS) -> str:
    """The markdown that replaces ``<!-- config-reference: kind -->``."""
    if kind == "apps":
        return apps(configs)
    return groups(configs, only="experiment" if kind == "experiment" else None)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return MARKER.sub(lambda match: render(match.group(1)), markdown)
