"""A Griffe extension (used by mkdocstrings, see mkdocs.yml) for two habits of this project's docstrings.

- Parameters documented together, ``n_way, n_shot, n_query: the task shape``, in an ``Args:`` or ``Attributes:``
  section (the names may go on over several lines, each but the last ending with a comma): Google-style parsers
  read one name per entry, so each group is split into one entry per name (the same description for each). A name
  that is not a parameter still fails the strict build.
- Sphinx roles such as ``:class:`Learner``` or ``:func:`~fewshot.evaluation.evaluate```: shown as inline code
  (``Learner``, ``evaluate``), as Sphinx would show them; cross-references in the pages themselves use
  mkdocstrings' ``[name][dotted.path]`` form, which the strict build checks.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Attributes|Keyword Args|Other Parameters):\s*$")
GROUPED = re.compile(r"^(\s*)([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)+)(\s*\([^)]*\))?:(.*)$")
NAMES_GO_ON = re.compile(r"^\s*[A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*\s*,\s*$")  # "a, b," with more names below
ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def split_grouped_entries(text: str) -> str:
    """``a, b: text`` entries of the parameter and attribute sections of ``text`` as ``a: text`` and ``b: text``
    (each with the entry's continuation lines)."""
    lines, out, i = text.splitlines(), [], 0
    section_indent: int | None = None
    while i < len(lines):
        line = lines[i]
        header = SECTION.match(line)
        if header:
            section_indent = len(header.group(1))
        elif line.strip() and section_indent is not None and _indent(line) <= section_indent:
            section_indent = None
        while section_indent is not None and NAMES_GO_ON.match(line) and i + 1 < len(lines):
            i += 1
            line = f"{line.rstrip()} {lines[i].strip()}"
        grouped = GROUPED.match(line) if section_indent is not None and not header else None
        if grouped is None:
            out.append(line)
            i += 1
            continue
        entry_indent = len(grouped.group(1))
        continuation = []
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > entry_indent):
            if not lines[i].strip() and (i + 1 >= len(lines) or _indent(lines[i + 1]) <= entry_indent):
                break
            continuation.append(lines[i])
            i += 1
        for name in (n.strip() for n in grouped.group(2).split(",")):
            out.append(f"{grouped.group(1)}{name}{grouped.group(3) or ''}:{grouped.group(4)}")
            out.extend(continuation)
    return "\n".join(out)


def plain_roles(text: str) -> str:
    """Sphinx roles as inline code: ``:class:`~a.b.C``` -> ```C```, ``:func:`f``` -> ```f```."""
    return ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)


class ProjectDocstrings(griffe.Extension):
    """Rewrites every docstring with :func:`split_grouped_entries` and :func:`plain_roles` as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain_roles(split_grouped_entries(obj.docstring.value))
