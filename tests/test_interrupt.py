"""Killing a run mid-checkpoint loses nothing: the last checkpoint loads and --resume continues
with bit-identical metrics."""

import json
import signal
import subprocess
import sys
import time

from rlhf_edu.checkpoint import safe_load

ARGS = ["--batch", "8", "--response-len", "8", "--ppo-epochs", "1", "--seed", "11", "--quiet",
        "--save-every", "1"]
STEPS = 12


def _train(run_dir, *extra, wait=True):
    cmd = [sys.executable, "-m", "rlhf_edu.cli", "train", "--run-dir", str(run_dir), *ARGS,
           *extra]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _metrics(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if not k.startswith("time_")} for x in lines]


def test_sigkill_mid_run_then_resume_is_bit_identical(tmp_path):
    ref = tmp_path / "reference"
    assert _train(ref, "--steps", str(STEPS)).returncode == 0

    run = tmp_path / "killed"
    proc = _train(run, "--steps", str(STEPS), wait=False)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill while it is saving a checkpoint every step
        metrics = run / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = safe_load(run / "checkpoint.pt")  # the previous checkpoint is whole
    assert 1 <= state["step"] < STEPS

    result = _train(run, "--steps", str(STEPS), "--resume")
    assert result.returncode == 0, result.stderr
    assert _metrics(run) == _metrics(ref)
