"""One writer per run directory, on every platform (``filelock``): a second writer is refused
at once, naming the directory and the holder's pid, and the lock dies with its process."""

import signal
import subprocess
import sys
import threading

import pytest

from rlhf_edu.rundir import RunDir

HOLD = ("import sys, time\n"
        "from rlhf_edu.rundir import RunDir\n"
        "run = RunDir(sys.argv[1])\n"
        "run.acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n")


@pytest.fixture
def holder(tmp_path):
    """Another process that holds ``tmp_path / "run"``."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield run, proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_writer_is_refused_naming_the_holder(holder):
    run, proc = holder
    with pytest.raises(ValueError) as e:
        RunDir(run).acquire()
    message = str(e.value)
    assert message == (f"run directory {str(run)!r} is in use by another run (process "
                       f"{proc.pid}); wait for it to end or choose another --run-dir")
    assert RunDir(run).busy() == proc.pid


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_the_lock_dies_with_its_process(holder):
    run, proc = holder
    proc.send_signal(signal.SIGKILL)  # no finalizer, no atexit: only the OS frees the lock
    proc.wait()
    assert RunDir(run).busy() is None
    mine = RunDir(run)
    mine.acquire()
    mine.release()


def test_one_writer_within_a_process_and_release_from_another_thread(tmp_path):
    first, second = RunDir(tmp_path / "run"), RunDir(tmp_path / "run")
    assert first.busy() is None and not (tmp_path / "run").exists()  # busy() creates nothing
    first.acquire()
    with pytest.raises(ValueError, match="is in use by another run"):
        second.acquire()
    thread = threading.Thread(target=first.release)  # as a trainer's finalizer may
    thread.start()
    thread.join()
    second.acquire()
    second.release()
    second.release()  # twice is harmless
    assert second.busy() is None
