"""MkDocs hook: what the tutorial pages need to run in the build, kept out of their sources.

A tutorial (``docs/tutorials/<name>.md``) is markdown with code blocks that markdown-exec runs at build time, every
block of a page in the session ``<name>``. This hook adds, invisibly:

- before the first block, one that moves the build's process into a new temporary folder (the tutorials write
  pictures, run folders and image folders into the current folder, as a reader's session would) and defines the
  picture helper; after the last, one that moves back and deletes the folder;
- for each ``<!-- show: <path> -->`` line, a block that embeds the PNG file ``<path>`` (written by the code above
  it) in the page.

A Python block in another session would not see the page's variables, so it is reported as a warning (an error in a
strict build).
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger("mkdocs.hooks.tutorials")

SHOW = re.compile(r"^<!-- show: (\S+) -->$", flags=re.M)
FENCE = re.compile(r'^```python exec="on"(.*)$', flags=re.M)

PRELUDE = '''```python exec="on" session="{session}"
import base64 as _base64, os as _os, pathlib as _pathlib, shutil as _shutil, tempfile as _tempfile

_build_folder = _os.getcwd()
_tutorial_folder = _tempfile.mkdtemp(prefix="fewshot-tutorial-")
_os.chdir(_tutorial_folder)


def _show(path):
    data = _pathlib.Path(path).read_bytes()
    width = int.from_bytes(data[16:20], "big") * 2 // 3  # PNG width in pixels at 150 dpi, shown at 100
    encoded = _base64.b64encode(data).decode()
    print(f'<img alt="{{path}}" style="width: {{width}}px; max-width: 100%" src="data:image/png;base64,{{encoded}}">')
```

'''
SHOW_BLOCK = '\n```python exec="on" session="{session}"\n_show("{path}")\n```\n'
EPILOGUE = '''

```python exec="on" session="{session}"
_os.chdir(_build_folder)
_shutil.rmtree(_tutorial_folder, ignore_errors=True)
```
'''


def prepare(markdown: str, session: str) -> str:
    """The tutorial ``markdown`` with the hidden blocks added (see the module docstring)."""
    for options in FENCE.findall(markdown):
        if f'session="{session}"' not in options:
            log.warning("tutorial %s: a code block runs outside the page's session (%s); give it "
                        'session="%s"', session, options.strip(), session)
    body = SHOW.sub(lambda match: SHOW_BLOCK.format(session=session, path=match.group(1)), markdown)
    return PRELUDE.format(session=session) + body + EPILOGUE.format(session=session)


def on_page_markdown(markdown: str, *, page: Any, **kwargs: Any) -> str:
    uri = page.file.src_uri
    if not uri.startswith("tutorials/"):
        return markdown
    return prepare(markdown, uri.removeprefix("tutorials/").removesuffix(".md"))
