"""The README's "Python API" section runs verbatim, so its example cannot drift from the library."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def api_blocks() -> list[str]:
    """The ```python blocks of the README section "## Python API", in order."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Python API\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, "README.md has no '## Python API' section"
    return re.findall(r"^```python\n(.*?)^```", match.group(1), flags=re.S | re.M)


def test_the_section_has_a_short_config_free_example_and_an_extension_example() -> None:
    blocks = api_blocks()
    assert len(blocks) == 2
    assert len(blocks[0].strip().splitlines()) < 30
    assert all("hydra" not in block and "omegaconf" not in block for block in blocks)
    assert "class NearestNeighbour(Learner)" in blocks[1] and "FewShotDataset.from_tensors" in blocks[1]


@pytest.mark.slow
def test_the_readme_python_api_example_runs_verbatim(capsys: pytest.CaptureFixture[str]) -> None:
    first, second = api_blocks()
    session: dict[str, object] = {"__name__": "readme"}
    exec(compile(first, "README.md: Python API, block 1", "exec"), session)
    trained = session["result"]["protonet"]
    assert trained.accuracies.shape == (100,)
    assert trained.mean > 0.6  # chance is 0.2 in 5-way episodes
    exec(compile(second, "README.md: Python API, block 2", "exec"), session)
    result = session["result"]
    assert [r.name for r in result.learners] == ["1-NN", "protonet"]
    assert result.test_dataset == "my-data"
    assert abs(result["1-NN"].mean - 0.2) < 0.05  # random pixels: nothing to learn, chance level
    assert "| 1-NN |" in capsys.readouterr().out
