"""Beyond one machine, on loopback: two torchrun "nodes" of one rank each meet by c10d
rendezvous on 127.0.0.1 and train like two ranks on one node; a node that never comes is a
one-line error after the rendezvous timeout; a worker killed mid-run is restarted by torchrun
and the run resumes from its last checkpoint by itself, finishing with an uninterrupted run's
metrics; and a failure on several ranks is told in one line that names the full log.

Every launcher starts in a session of its own and its process group is killed at the end of
the test, whatever happened, so no process outlives a test.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_edu.checkpoint import safe_load

pytestmark = pytest.mark.distributed

ARGS = ["--batch", "8", "--response-len", "8", "--ppo-epochs", "1", "--seed", "11", "--quiet",
        "--save-every", "1"]
STEPS = 4
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
TIMEOUT = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(run_dir: Path, *extra: str, steps: int = STEPS) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rlhf_edu", "train", "--run-dir", str(run_dir), *ARGS,
           "--steps", str(steps), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, start_new_session=True)


def _nodes(run_dir: Path, *extra: str, nodes=(0, 1), timeout: int | None = None):
    """One launcher per node rank in ``nodes``, all of a two-node job."""
    port = free_port()
    flags = ["--nnodes", "2", "--nproc", "1", "--rdzv-endpoint", f"127.0.0.1:{port}", *extra]
    if timeout is not None:
        flags += ["--rdzv-timeout", str(timeout)]
    return [_start(run_dir, *flags, "--node-rank", str(r)) for r in nodes]


def _finish(procs, limit=TIMEOUT):
    """Wait for every launcher; (returncode, stdout, stderr) of each."""
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=limit)
        out.append((p.returncode, stdout, stderr))
    return out


def _kill_all(procs) -> None:
    """Kill each launcher's process group and every process below it (torchrun starts its
    workers in sessions of their own, out of the launcher's group)."""
    for p in procs:
        below = _descendants(p.pid)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in below:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait()


@pytest.fixture
def launched():
    """A list to put launchers in; their process groups are killed at the end of the test."""
    procs: list[subprocess.Popen] = []
    yield procs
    _kill_all(procs)


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if not k.startswith("time_")} for x in lines]


def _close(got: list[dict], want: list[dict]) -> None:
    """Equal metrics, numbers to the DDP test's tolerance (atol 1e-5, rtol 1e-4)."""
    assert [m["step"] for m in got] == [m["step"] for m in want]
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in w:
            if isinstance(w[k], float):
                assert g[k] == pytest.approx(w[k], abs=1e-5, rel=1e-4), (g["step"], k)
            else:
                assert g[k] == w[k], (g["step"], k)


_REFERENCES: dict[str, Path] = {}


def _reference(tmp_path_factory, *extra: str) -> Path:
    """An uninterrupted two-rank run on one node (``--nproc 2``), made once per settings."""
    key = " ".join(extra)
    if key not in _REFERENCES:
        run = tmp_path_factory.mktemp("reference") / "run"
        proc = _start(run, "--nproc", "2", *extra)
        try:
            code, _, err = _finish([proc])[0]
        finally:
            _kill_all([proc])
        assert code == 0, err[-3000:]
        _REFERENCES[key] = run
    return _REFERENCES[key]


# ------------------------------------------------------------------ two nodes


@pytest.mark.parametrize("shard", [[], ["--shard", "zero3"]], ids=["ddp", "zero3"])
def test_two_nodes_train_like_two_ranks_on_one(tmp_path, tmp_path_factory, launched, shard):
    """Two nodes of one rank each give the metrics of one node with two ranks (which the DDP
    and sharding tests check against one process with the whole batch)."""
    ref = _reference(tmp_path_factory, *shard)
    run = tmp_path / "run"
    launched += _nodes(run, *shard)
    results = _finish(launched)
    for code, _, err in results:
        assert code == 0, err[-3000:]
    _close(_metrics(run), _metrics(ref))
    assert sum(out.count("RM score") for _, out, _ in results) == 1  # global rank 0 alone
    ours = {p.name for p in run.iterdir()}
    assert {"config.json", "metrics.jsonl", "checkpoint.pt", "training.png"} <= ours


def test_a_node_that_never_comes_is_one_line_after_the_timeout(tmp_path, launched):
    start = time.monotonic()
    launched += _nodes(tmp_path / "run", nodes=(0,), timeout=5)
    (code, _, err), = _finish(launched, limit=120)
    took = time.monotonic() - start
    print(f"\nmissing node: exit {code} after {took:.1f} s: {err.strip()}")
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err
    assert "did not all join" in err and "launch-node0.log" in err
    assert took < 90


# ------------------------------------------------------------------ a lost worker


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _worker(launcher: int) -> int:
    """The pid of a training worker below ``launcher`` (the rendezvous, not --node-rank,
    decides its global rank: it may be rank 0, the one that writes the run directory)."""
    for pid in _descendants(launcher):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        env = dict(e.decode(errors="replace").partition("=")[::2] for e in environ if e)
        if "TORCHELASTIC_RUN_ID" in env and "RANK" in env:
            return pid
    raise AssertionError(f"no worker below process {launcher}")


def _saved_step(run: Path) -> int:
    try:
        return int(safe_load(run / "checkpoint.pt")["step"])
    except Exception:  # not there yet, or caught being replaced
        return 0


def _kill_and_time(run: Path, launcher: int, procs) -> float:
    """SIGKILL a worker once the first checkpoint is saved; seconds until the restarted group
    has saved a step past the one it resumed from (it rewrites config.json when it claims the
    run directory, then loads the checkpoint there)."""
    deadline = time.monotonic() + TIMEOUT
    while _saved_step(run) < 1:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            "the run ended before its first checkpoint"
        time.sleep(0.05)
    os.kill(_worker(launcher), signal.SIGKILL)
    killed = time.time()
    resumed_from = None
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        if resumed_from is None and (run / "config.json").stat().st_mtime > killed:
            resumed_from = _saved_step(run)
        elif resumed_from is not None and _saved_step(run) > resumed_from:
            return time.time() - killed
        time.sleep(0.05)
    raise AssertionError("the restarted run saved no further step")


@pytest.mark.parametrize("nodes", [1, 2], ids=["one-node", "two-nodes"])
def test_a_killed_worker_is_restarted_and_the_run_resumes(tmp_path, tmp_path_factory,
                                                          launched, nodes):
    ref = _reference(tmp_path_factory)
    run = tmp_path / "run"
    if nodes == 1:
        launched.append(_start(run, "--nproc", "2", "--max-restarts", "2"))
    else:
        launched += _nodes(run, "--max-restarts", "2")
    cost = _kill_and_time(run, launched[-1].pid, launched)  # a worker of the last node
    print(f"\n{nodes} node(s): kill -> next checkpoint after resuming: {cost:.1f} s")
    results = _finish(launched)
    for code, _, err in results:
        assert code == 0, err[-3000:]
    assert _metrics(run) == _metrics(ref)  # bit for bit, and one line per step
    # global rank 0 printed its setup line once per attempt: the group ran twice
    assert sum(out.count("2 processes") for _, out, _ in results) == 2


# ------------------------------------------------------------------ many ranks, one message


def test_a_failure_on_two_ranks_is_one_line_naming_the_log(tmp_path, tmp_path_factory,
                                                           launched):
    """An error every rank raises (the sharded checkpoint they resume from is damaged) prints
    one line: the rank, its exit code, its own message and the log file."""
    run = tmp_path / "run"
    shutil.copytree(_reference(tmp_path_factory, "--shard", "zero3"), run)  # a sharded run
    shards = [f for d in run.glob("shards-*") for f in d.glob("*.distcp")]
    assert shards
    for f in shards:
        f.write_bytes(b"not a tensor")
    launched.append(_start(run, "--nproc", "2", "--shard", "zero3", "--resume",
                           steps=STEPS + 1))
    (code, out, err), = _finish(launched)
    print(f"\nexit {code}; stderr:\n{err}")
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 3, err
    assert re.search(r"rank [01] failed \(exit code 2\): error: the sharded checkpoint "
                     r".* is damaged or incomplete", lines[-1]), lines[-1]
    assert code == 2  # the rank's own exit code (a bad input), as in one process
    assert str(run / "launch.log") in lines[-1]
    log = (run / "launch.log").read_text()
    assert "rank 0: error:" in log and "rank 1: error:" in log  # each rank's account is kept


# ------------------------------------------------------------------ the launcher, in-process


@pytest.mark.parametrize("flags, message", [
    (["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1"],
     "--node-rank 2: must be in [0, 2) for --nnodes 2"),
    (["--nnodes", "2"], "--nnodes 2 needs --rdzv-endpoint HOST:PORT"),
    (["--nnodes", "2", "--rdzv-endpoint", "h:70000"], "port in 1..65535, got 'h:70000'"),
    (["--nnodes", "2", "--rdzv-endpoint", "h"], "must be HOST:PORT"),
])
def test_bad_launch_flags_are_one_line_before_anything_starts(tmp_path, capsys, flags,
                                                               message):
    from rlhf_edu.cli import main

    assert main(["train", "--run-dir", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "run").exists()


def test_the_torchrun_command_the_launcher_builds(tmp_path, monkeypatch):
    import rlhf_edu.cli as cli

    seen = {}

    class Ran:
        def __init__(self, cmd, **kwargs):
            seen["cmd"] = cmd

        def wait(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", Ran)
    run = tmp_path / "run"
    argv = ["train", "--nnodes", "2", "--node-rank=1", "--rdzv-endpoint", "10.0.0.1:29400",
            "--nproc", "4", "--max-restarts", "3", "--rdzv-timeout", "15", "--steps", "5",
            "--run-dir", str(run)]
    assert cli.main(argv) == 0
    cmd = seen["cmd"]
    module = cmd.index("-m", 2)
    assert cmd[module + 1:] == ["rlhf_edu", "train", "--steps", "5", "--run-dir", str(run)]
    from torch.distributed.run import get_args_parser

    launch = get_args_parser().parse_args(cmd[3:])
    assert (launch.nnodes, launch.node_rank, launch.nproc_per_node) == ("2", 1, "4")
    assert (launch.rdzv_backend, launch.rdzv_endpoint) == ("c10d", "10.0.0.1:29400")
    assert launch.rdzv_id == cli.distributed.default_rdzv_id(run) and launch.max_restarts == 3
    assert launch.rdzv_conf == "join_timeout=15"
    assert (run / "launch-node1.log").exists()


def test_a_restart_resumes_only_the_run_its_own_launch_started(tmp_path, monkeypatch):
    from rlhf_edu.distributed import forget_elastic_run, mark_elastic_run, resumes_after_restart

    env = {"TORCHELASTIC_RUN_ID": "job-1", "TORCHELASTIC_MAX_RESTARTS": "2", "RANK": "0"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    mark_elastic_run(tmp_path, restarted=False)
    assert not resumes_after_restart(tmp_path, restarted=False)  # a first attempt: as asked
    assert not resumes_after_restart(tmp_path, True)  # killed before it wrote anything: start
    (tmp_path / "config.json").write_text("{}")
    assert resumes_after_restart(tmp_path, True)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-2")  # another launch's run: not ours
    assert not resumes_after_restart(tmp_path, True)
    mark_elastic_run(tmp_path, restarted=True)  # a restart does not claim a run for its launch
    assert (tmp_path / ".elastic").read_text().strip() == "job-1"
    # a later launch that reuses the id "job-1" is refused the directory (no --resume): its
    # first attempt drops the old note, so its restarts do not resume the earlier run
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    forget_elastic_run(tmp_path, restarted=False)
    assert not resumes_after_restart(tmp_path, True)


# ------------------------------------------------------------------ the Slurm recipe

SBATCH = Path(__file__).parent.parent / "examples" / "slurm" / "rlhf_edu_train.sbatch"


def test_the_slurm_script_parses_and_its_command_is_ours():
    """The sbatch script is valid bash, and the torchrun command it runs parses with torchrun's
    parser, its training arguments with rlhf-edu's."""
    import shlex

    from torch.distributed.run import get_args_parser

    from rlhf_edu.cli import build_parser

    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    lines = SBATCH.read_text().splitlines()
    command = lines[lines.index("# command:") + 1]
    values = {"$SLURM_NNODES": "2", "$SLURM_NODEID": "0", "$head": "node1", "$PORT": "29400",
              "$SLURM_JOB_ID": "123", "$RUN_DIR": "/shared/runs/123"}
    for name, value in values.items():
        command = command.replace(name, value)
    words = shlex.split(command)
    assert words[:2] == ["srun", "torchrun"]
    launch = get_args_parser().parse_args(words[2:])
    assert (launch.nnodes, launch.rdzv_backend, launch.rdzv_endpoint) == ("2", "c10d",
                                                                          "node1:29400")
    assert launch.module and launch.training_script == "rlhf_edu"
    args = build_parser().parse_args(launch.training_script_args)
    assert args.command == "train" and str(args.run_dir) == "/shared/runs/123"
