"""Killing a run mid-checkpoint loses nothing: the last checkpoint loads and --resume continues
with bit-identical metrics."""

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest

from rlhf_edu.checkpoint import safe_load
from rlhf_edu.cli import main
from rlhf_edu.models import load_pretrained

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


def test_sigkill_mid_run_then_resume_is_bit_identical(tmp_path, uninterrupted):
    """Against the module's uninterrupted run, which saves only at its end: checkpoints do not
    change a run's metrics."""
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
    assert _metrics(run) == uninterrupted


# ------------------------------------------------------------------ Ctrl-C and run directories
# With the default --save-every 10, a 12-step run has no periodic checkpoint before step 10:
# what Ctrl-C saves is all there is.

CTRL_C_ARGS = ["--batch", "8", "--response-len", "8", "--ppo-epochs", "1", "--seed", "11",
               "--quiet"]
CTRL_C_STEPS = 12


def _cli(run_dir, *extra, wait=True):
    cmd = [sys.executable, "-m", "rlhf_edu.cli", "train", "--run-dir", str(run_dir),
           "--steps", str(CTRL_C_STEPS), *CTRL_C_ARGS, *extra]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _cli_here(capsys, run_dir, *extra) -> subprocess.CompletedProcess:
    """What :func:`_cli` returns, from ``rlhf-edu train`` in this process: for the calls that
    end before any training starts (a refusal, "nothing to do")."""
    capsys.readouterr()
    code = main(["train", "--run-dir", str(run_dir), "--steps", str(CTRL_C_STEPS),
                 *CTRL_C_ARGS, *extra])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["rlhf-edu", "train"], code, captured.out, captured.err)


def _wait_for(predicate, seconds=120):
    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def _lines(path):
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, made once: its directory (tests change copies of it)."""
    run = tmp_path_factory.mktemp("ctrl-c") / "reference"
    result = _cli(run)
    assert result.returncode == 0, result.stderr
    return run


@pytest.fixture(scope="module")
def uninterrupted(reference):
    return _metrics(reference)


# after 0 steps: no checkpoint to resume from; after 1: the Ctrl-C's checkpoint (a Ctrl-C after
# several steps is the double Ctrl-C test's)
@pytest.mark.parametrize("after_steps", [0, 1])
def test_ctrl_c_then_resume_is_bit_identical(tmp_path, capsys, uninterrupted, after_steps):
    """Ctrl-C finishes the running step, saves it atomically and exits 130; --resume goes on."""
    run = tmp_path / "run"
    proc = _cli(run, wait=False)
    if after_steps == 0:  # the run has claimed its directory but taken no step
        _wait_for(lambda: (run / "config.json").exists())
    else:
        _wait_for(lambda: _lines(run / "metrics.jsonl") >= after_steps)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    if (run / "checkpoint.pt").exists():
        step = safe_load(run / "checkpoint.pt")["step"]
        assert f"interrupted after step {step}; saved" in last and "--resume" in last, err
        assert _lines(run / "metrics.jsonl") == step
    else:  # interrupted before the first step began: nothing to save, nothing lost
        assert "interrupted" in last and _lines(run / "metrics.jsonl") == 0, err
    refused = _cli_here(capsys, run)  # a fresh start must not overwrite it...
    assert refused.returncode == 2 and "pass --resume to continue it" in refused.stderr
    resumed = _cli(run, "--resume")  # ...and --resume continues it
    assert resumed.returncode == 0, resumed.stderr
    assert _metrics(run) == uninterrupted


def test_ctrl_c_twice_stops_at_once_and_the_run_still_resumes(tmp_path, uninterrupted):
    run = tmp_path / "run"
    proc = _cli(run, wait=False)
    _wait_for(lambda: _lines(run / "metrics.jsonl") >= 2)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    resumed = _cli(run, "--resume")  # from the last checkpoint, or from step 0 without one
    assert resumed.returncode == 0, resumed.stderr
    assert _metrics(run) == uninterrupted


def test_one_writer_per_run_directory(tmp_path, capsys, uninterrupted):
    run = tmp_path / "run"
    first = _cli(run, "--steps", "1000", wait=False)  # long enough to be running throughout
    _wait_for(lambda: (run / "config.json").exists())
    for extra in ((), ("--resume",)):
        second = _cli_here(capsys, run, *extra)  # another process: this one
        assert second.returncode == 2, second.stderr
        assert f"is in use by another run (process {first.pid})" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    _wait_for(lambda: _lines(run / "metrics.jsonl") >= CTRL_C_STEPS)
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=120)
    assert first.returncode == 130
    metrics = _metrics(run)  # one writer: steps 1, 2, 3, ... once each, in order
    assert [m["step"] for m in metrics] == list(range(1, len(metrics) + 1))
    assert metrics[:CTRL_C_STEPS] == uninterrupted


def test_no_state_of_a_run_directory_is_a_dead_end(tmp_path, capsys, reference, uninterrupted):
    run = tmp_path / "run"
    shutil.copytree(reference, run)  # a finished run
    # a wrong flag on --resume is refused and rewrites nothing...
    config = (run / "config.json").read_text()
    wrong = _cli_here(capsys, run, "--resume", "--beta", "0.2", "--steps", "13")
    assert wrong.returncode == 2 and "holds a different run" in wrong.stderr
    assert (run / "config.json").read_text() == config
    # ...a finished run resumed to the same step has nothing to do...
    again = _cli_here(capsys, run, "--resume")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    # ...metrics.jsonl lost: a fresh start must not overwrite the checkpoint
    (run / "metrics.jsonl").unlink()
    refused = _cli_here(capsys, run)
    assert refused.returncode == 2 and "already holds a run" in refused.stderr
    assert safe_load(run / "checkpoint.pt")["step"] == CTRL_C_STEPS
    # a run killed before its first checkpoint (config and two steps of metrics, no
    # checkpoint) restarts from step 0 with --resume
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text(config)
    (partial / "metrics.jsonl").write_text("{}\n{}\n")
    restarted = _cli(partial, "--resume")
    assert restarted.returncode == 0, restarted.stderr
    assert "no checkpoint yet: the run starts again from step 0" in restarted.stdout
    assert _metrics(partial) == uninterrupted


# ------------------------------------------------------------------ Ctrl-C in the other commands
# pretrain, train-rm and dpo train one model each: Ctrl-C finishes the running step, saves the
# model trained so far to --out (atomically; its metadata says where it stopped), prints one
# line and exits 130.

TRAINING_COMMANDS = {
    "pretrain": ["pretrain", "--reviews", "2000", "--epochs", "200", "--n-layer", "1",
                 "--n-head", "2", "--n-embd", "32", "--eval-samples", "8"],
    "train-rm": ["train-rm", "--pairs", "64", "--heldout", "8", "--epochs", "500"],
    "dpo": ["dpo", "--pairs", "32", "--batch", "4", "--epochs", "500", "--eval-samples", "8"],
}
KINDS = {"pretrain": "sft", "train-rm": "reward", "dpo": "sft"}


def _after_first_step(proc, seconds=120) -> str:
    """Read the progress bar on stderr until it shows a step done; what it read so far."""
    seen, deadline = b"", time.time() + seconds
    while not re.search(rb"\| *[1-9]\d*/\d+ ", seen):
        assert time.time() < deadline and proc.poll() is None, seen.decode(errors="replace")
        ready, _, _ = select.select([proc.stderr], [], [], 0.5)
        if ready:
            seen += os.read(proc.stderr.fileno(), 4096)
    return seen.decode(errors="replace")


@pytest.mark.parametrize("command", TRAINING_COMMANDS)
def test_ctrl_c_saves_the_model_trained_so_far_and_exits_130(tmp_path, command):
    out = tmp_path / "model.pt"
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_edu.cli", *TRAINING_COMMANDS[command],
                             "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        seen = _after_first_step(proc)
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=120)[1].decode(errors="replace")
    finally:
        proc.kill()
    err = seen + rest
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    found = re.fullmatch(rf"rlhf-edu {command}: .* interrupted after step (\d+) of (\d+) "
                         r"\(epoch (\d+)\); saved the model trained so far to "
                         + re.escape(str(out)), last)
    assert found, err
    step, total, epoch = map(int, found.groups())
    assert 1 <= step < total and epoch >= 1
    state = safe_load(out)
    assert state["kind"] == KINDS[command]
    assert state["meta"]["interrupted"] == {"step": step, "of": total, "epoch": epoch}
    load_pretrained(KINDS[command], out)  # the saved model loads
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left
