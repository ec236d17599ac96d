"""The GPU benchmark is one prepared script for a borrowed CUDA machine: it must not first fail there.

``--quick`` runs every part at toy sizes on whatever device is present (CPU here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.long
def test_the_gpu_benchmark_runs_every_part(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_gpu.py", "--quick", "--out", str(out)],
        cwd=REPO,
        env={**env, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    cifar = result["cifar10_ddpm_forget_one_class"]
    assert cifar["outer_steps"] == 2 and cifar["unlearn_seconds"] > 0 and cifar["audit_seconds"] > 0
    assert result["official_loop_style_seconds_per_outer_step"] > 0 and result["speedup_per_outer_step"] > 0
    assert result["tiny_sd_64"]["train_steps"] == 2 and result["tiny_sd_64"]["erase_steps"] == 2
    # The device is named: CPU here, the GPU's name on a CUDA machine.
    expected = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    assert result["quick"] is True and result["device"] == expected
