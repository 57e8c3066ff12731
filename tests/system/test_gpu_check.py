"""The GPU check's CPU dry run (benchmarks/gpu_check.sh --cpu-dry-run): every section's code path at toy shapes,
against the real learner, decoders and Ray, so that the check cannot rot between the sessions that have a GPU.
The loop section is `diffurl train`, which the train integration tests cover; it is left out here."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
@pytest.mark.slow
def test_the_dry_run_measures_every_decoder_setting_and_estimator_and_fails_none():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu-dry-run", "--sections",
                           "decode,learner,memory,sync,adam"], cwd=REPO_ROOT, env={**env, "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=400)
    out = done.stdout
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FAILED" not in out and "skipped" not in out, out
    table = out[out.index("| section | what | value |"):]
    for rows in (10, 40):
        assert re.search(rf"\| decode \| {rows} rows, reference, 32 steps \| [\d,.]+ tokens/s \|", table)
        for cache in ("prefix", "dual"):
            for k in (1, 2, 4):
                assert re.search(rf"\| decode \| {rows} rows, fast {cache}, {k}/forward \| [\d,.]+ tokens/s \|", table)
    # forcing k tokens per forward takes 32 / k forwards of the 32-token canvas (blocks of 16)
    for cache in ("prefix", "dual"):
        for k in (1, 2, 4):
            assert re.search(rf"40 rows, fast {cache}, {k}/forward: [\d,.]+ tokens/s  \([\d.]+x the reference; "
                             rf"{32 // k} forwards,", out)
    for shape in ("1.5B", "7B"):
        for estimator in ("coupled", "d1"):
            assert re.search(rf"\| learner \| {shape}, {estimator} \| [\d,]+ tokens/s, MFU n/a \|", table)
    assert out.count("receiver matches") == 2
    assert "Python 3." in out and "torch " in out and "transformers " in out  # what it ran with
