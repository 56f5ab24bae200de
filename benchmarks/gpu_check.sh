#!/bin/bash
# The one device call of issue 20 (benchmarks/gpu_check.py on the lent H200), rehearsed on the CPU by
# tests/test_gpu_check.py (`python benchmarks/gpu_check.py --device cpu --smoke --out /tmp/gpu_check`).
#
# Before the call, on the development machine, in the repository root:
#   1. The peers' wheels for the device's Python 3.12 (higher, torchopt and torchopt's optree and graphviz are not
#      on its image; the script skips a peer that does not import, with a message). hydra-core, omegaconf and antlr4 are NOT needed: the script
#      builds everything from the Python API and imports neither (the test runs it with both made unimportable).
#        echo /.whl/ >> .git/info/exclude
#        python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#          -d .whl higher==0.2.1 torchopt==0.7.3 optree==0.20.0 graphviz==0.21
#   2. `status`: go on only if can_start_another is true (budget_left_s >= about 800 for a call and one rerun).
#   3. ONE `run` call of the device tool with
#        command:   bash benchmarks/gpu_check.sh
#        carry:     [".whl"]
#        timeout_s: 380
#      The script stops starting MAML cells and shortens the time-to-accuracy training so as to finish by
#      --deadline (320 s); `timeout 350` is the hard stop; every section is written to $OUT as it ends. A start
#      (about 1.5 min) plus two such calls fits the 15 device minutes: rerun at once (warm machine) only after an
#      early failure, else call give_back.
#   4. Copy gpu_check.md, gpu_check.json and log.txt from the returned files into benchmarks/results/ as
#      gpu_check_cuda.{md,json} and gpu_check_cuda_log.txt, and add the figures to the README.
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=. FEWSHOT_CACHE=/tmp/fewshot_cache
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda)'
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl && echo "peer wheels installed in /tmp/site" || echo "peer wheels did not install: peers skipped"
  fi
} 2>&1 | tee "$OUT/log.txt"
[ -d /tmp/site ] && export PYTHONPATH=.:/tmp/site
timeout 350 python3 benchmarks/gpu_check.py --device cuda --out "$OUT" --deadline 320 2>&1 | tee -a "$OUT/log.txt"
status=$?
echo "gpu_check exit status: $status" | tee -a "$OUT/log.txt"
exit $status
