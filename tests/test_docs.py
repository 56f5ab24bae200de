"""The documentation site cannot leave anything out: every public module is on an API page, every YAML config file on
the command-line or paper-settings page (both generated at build time by the hooks in docs/hooks/). The build itself
(.ci/docs: ``mkdocs build --strict``) executes the tutorials and fails on any warning (a page left out of the
navigation included); these tests need no documentation tools."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIGS = ROOT / "fewshot" / "configs"


def hook(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", DOCS / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rendered(page: str, module: ModuleType) -> str:
    return module.on_page_markdown((DOCS / page).read_text(encoding="utf-8"))


def every_module() -> set[str]:
    """Every importable module of the two packages (packages included), private ones (``_name``) left out."""
    found = set()
    for package in ("fewshot", "episodes"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if not any(part.startswith("_") for part in parts) and (path.parent / "__init__.py").is_file():
                found.add(".".join(parts))
    return found


def test_every_public_module_is_on_an_api_page() -> None:
    api = hook("api_modules")
    pages = sorted((DOCS / "api").glob("*.md"))
    documented = set()
    for page in pages:
        text = rendered(f"api/{page.name}", api)
        assert "<!-- api-modules:" not in text
        documented |= set(re.findall(r"^::: ([\w.]+)$", text, flags=re.M))
    missing = sorted(every_module() - api.APP_LAYER - documented)
    assert not missing, f"modules on no API page: {missing}; add '<!-- api-modules: <package> -->' to a docs/api page"
    # A module of a documented package appears once, with its members; packages show their docstring only.
    learners = rendered("api/learners.md", api)
    assert learners.count("::: fewshot.learners.metric.protonet\n") == 1
    assert "::: fewshot.learners.metric\n    options:\n      members: false" in learners
    assert "fewshot.learners.metric.protonet" in api.directives("fewshot.learners")


def test_every_yaml_config_is_named_on_the_cli_or_paper_settings_page() -> None:
    reference = hook("config_reference")
    text = rendered("cli.md", reference) + rendered("experiments.md", reference)
    assert "<!-- config-reference:" not in text
    missing = []
    for path in sorted(CONFIGS.rglob("*.yaml")):
        group = path.parent.relative_to(CONFIGS).as_posix()
        name = f"`python3 -m fewshot {path.stem}` ({path.name})" if group == "." else f"**`{group}={path.stem}`**"
        if name not in text:
            missing.append(path.relative_to(CONFIGS).as_posix())
    assert not missing, f"config files on neither page: {missing}"


def test_an_option_shows_its_comment_target_and_defaults() -> None:
    reference = hook("config_reference")
    lines = reference.groups(CONFIGS).splitlines()
    protonet = next(line for line in lines if line.startswith("- **`learner=protonet`**"))
    assert protonet == ("- **`learner=protonet`** (`fewshot.learners.ProtoNet`): Prototypical Networks (Snell et al. "
                        "2017): squared Euclidean distance to class means.")
    assert lines[lines.index(protonet) + 1] == "  Keys: `distance=euclidean`, `temperature=1.0`."
    apps = reference.apps(CONFIGS)
    assert "| `evaluation.settings` | `null` | e.g. 'evaluation.settings=[[5,1],[5,5]]' |" in apps
    assert "| `defaults`" not in apps and "hydra.run" not in apps  # groups and Hydra's own settings are left out
    # Placeholders such as <dir> are escaped, so that they show instead of vanishing as HTML tags.
    assert ("### `python3 -m fewshot eval` (eval.yaml)\n\nfewshot-eval run=&lt;directory of a fewshot-train "
            "run&gt;:") in apps


def test_grouped_parameters_are_split_and_sphinx_roles_shown_as_code() -> None:
    pytest.importorskip("griffe")  # the docs extra
    docstrings = hook("griffe_docstrings")
    text = ("Fit a head.\n\nArgs:\n    n_way, n_shot (int): the task shape,\n        in classes and images.\n"
            "    alpha,\n        beta: weights.\n    seed: any int.\n\nReturns:\n    a, b: not parameters.")
    assert docstrings.split_grouped_entries(text) == (
        "Fit a head.\n\nArgs:\n    n_way (int): the task shape,\n        in classes and images.\n"
        "    n_shot (int): the task shape,\n        in classes and images.\n    alpha: weights.\n    beta: weights.\n"
        "    seed: any int.\n\nReturns:\n    a, b: not parameters.")
    assert docstrings.plain_roles("see :class:`~fewshot.learners.Learner` and :func:`evaluate`.") == (
        "see `Learner` and `evaluate`.")


def test_tutorial_pages_get_a_scratch_folder_and_their_pictures(caplog: pytest.LogCaptureFixture) -> None:
    tutorials = hook("tutorials")
    page = '# T\n\n```python exec="on" source="above" session="t"\nx = 1\n```\n\n<!-- show: a.png -->\n'
    prepared = tutorials.prepare(page, "t")
    blocks = re.findall(r'^```python exec="on" session="t"\n(.*?)^```', prepared, flags=re.S | re.M)
    assert len(blocks) == 3
    assert "_os.chdir(_tutorial_folder)" in blocks[0] and blocks[1] == '_show("a.png")\n'
    assert "_os.chdir(_build_folder)" in blocks[2]
    assert "# T\n\n```python exec=\"on\" source=\"above\" session=\"t\"\nx = 1\n```" in prepared
    assert not caplog.records
    tutorials.prepare(page.replace('session="t"', 'session="other"'), "t")
    assert 'a code block runs outside the page\'s session (source="above" session="other")' in caplog.text
    # Every tutorial's blocks run in its own session.
    for path in sorted((DOCS / "tutorials").glob("*.md")):
        caplog.clear()
        assert "<!-- show: " in path.read_text(encoding="utf-8")
        tutorials.prepare(path.read_text(encoding="utf-8"), path.stem)
        assert not caplog.records, path.name
