"""The prepared GPU check (benchmarks/gpu_check.py) rehearsed on the CPU at its smoke size: every section runs, the
report has its fields, and every correctness check passes, so the one device call cannot fail on a typo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("env", "correctness", "syncs", "finetune", "maml", "time_to_accuracy")
# Run the script as on the device image, where hydra-core and omegaconf are not installed: importing them fails.
WITHOUT_HYDRA = """
import importlib.abc, runpy, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("hydra", "omegaconf", "antlr4"):
            raise ModuleNotFoundError(f"No module named {name!r} (as on the device image)")
sys.meta_path.insert(0, NotInstalled())
sys.argv = ["benchmarks/gpu_check.py", *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_gpu_check_smoke_on_cpu(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", WITHOUT_HYDRA, "--device", "cpu", "--smoke", "--out", str(tmp_path)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["errors"] == {} and report["finished"] == list(SECTIONS)
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check on CPU")
    assert "hydra" not in report["env"] and report["env"]["matmul_peaks"]["fp32_tflops"] > 0

    checks = report["correctness"]["checks"]
    assert len(checks) == 7 and report["correctness"]["all_passed"]
    assert all(c["passed"] and c["value"] <= c["threshold"] for c in checks), checks

    assert report["syncs"] == {"skipped": "CUDA only"}

    ft = report["finetune"]
    assert len(ft["rows"]) == 3 and all(r["episodes_per_s"] > 0 for r in ft["rows"].values())
    assert ft["same_per_episode_accuracies"] is True

    tta = report["time_to_accuracy"]
    assert tta["meta_batches"] >= 1 and 0 <= tta["test_accuracy"] <= 1 and tta["projected_60000_min"] > 0

    maml = report["maml"]
    ran = [r for r in maml["rows"] if "error" not in r]
    assert {r["impl"] for r in ran} >= {"fewshot-batched", "fewshot-sequential", "plain-loop"}
    assert all(r["tasks_per_s"] > 0 and r["flops_per_call"] > 0 for r in ran)
    assert all(r["impl"] in ("higher", "torchopt") for r in maml["rows"] if "error" in r)  # peers: where installed
    assert len(maml["summary"]) == 4 and all(line["value_spread"] < 1e-4 for line in maml["summary"])

