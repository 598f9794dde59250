"""Where the computation runs: threads, device and seeds, decided in one place."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from .validate import check_int, check_seed, shown

# One OpenMP thread per core at most is useful; 1024 is above the hardware threads of any single
# machine (two 192-core EPYCs: 768), and a million threads crash the interpreter at exit.
THREADS_MAX = 1024


def env_int(name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
    """The environment variable ``name`` as an int in ``[minimum, maximum]`` (``default`` when
    unset); ``ValueError`` naming the variable, its value and the range otherwise (``int()``'s
    own message, "invalid literal for int()", names neither)."""
    text = os.environ.get(name)
    if text is None:
        return default
    expect = f"an int in [{minimum}, {maximum}]" if maximum is not None else f"an int >= {minimum}"
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"${name} must be {expect}, got {shown(text)}") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"${name} must be {expect}, got {shown(text)}")
    return value


def configure_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads (default: ``$RLHF_EDU_THREADS`` or 1) and return the number,
    an int in ``[1, THREADS_MAX]``.

    The toy models are too small to gain from a second thread, and OpenMP's spin-waiting makes a
    step 10-50x slower whenever another process is busy on a 2-core machine, so one thread is the
    default. Benchmarks print this value with their tables.
    """
    if n is None:
        n = env_int("RLHF_EDU_THREADS", 1, minimum=1, maximum=THREADS_MAX)
    check_int("threads", n, minimum=1, maximum=THREADS_MAX)
    torch.set_num_threads(int(n))
    return int(n)


def select_device(device: str = "auto") -> torch.device:
    """``"auto"`` → ``cuda`` if available else ``cpu``; otherwise the named device, checked.

    A CUDA device always comes back with its index (``"cuda"`` → the current device, e.g.
    ``cuda:0``), so two names of the same GPU compare equal.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r}: {e}") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: {torch.cuda.device_count()} "
                             "CUDA device(s) visible")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type != "cpu":  # mps, xpu, ...: the trainer is written and tested for cpu and cuda
        raise ValueError(f"device {device!r} is not supported: use cpu, cuda, cuda:N or auto")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) with ``seed`` in ``[0, 2**63)``, the range of
    every seed of the package. NumPy's global generator takes 32 bits: a seed below 2**32 seeds it
    as itself, a larger one as its two 32-bit halves (NumPy alone refuses it)."""
    check_seed("seed", seed)
    random.seed(seed)
    np.random.seed(seed if seed < 2**32 else [seed % 2**32, seed >> 32])
    torch.manual_seed(seed)


# ---------------------------------------------------------------- torch.distributed

ROLES = ("actor", "critic", "reward", "reference")


def check_nproc(nproc: int, device: str = "auto") -> None:
    """Raise ``ValueError`` unless ``nproc`` processes can each have ``device`` of their own.

    On CUDA (nccl) every process needs a GPU of its own; CPU processes (gloo) share the cores.
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc <= 0:
        raise ValueError(f"--nproc must be a positive integer, got {nproc!r}")
    cores = os.cpu_count() or 1
    most = max(4, 2 * cores)  # a few ranks per core still teach; hundreds only exhaust memory
    if select_device(device).type == "cpu" and nproc > most:
        raise ValueError(f"--nproc {nproc} on CPU: at most {most} processes on this machine's "
                         f"{cores} cores (each holds the four models and an interpreter, "
                         "~0.4 GB; more only queue for the same cores)")
    if nproc > 1 and device not in ("auto", "cuda") and select_device(device).type == "cuda":
        raise ValueError(f"device {device!r} names one GPU, but {nproc} processes each need "
                         "their own: pass --device cuda (rank r takes GPU LOCAL_RANK)")
    if select_device(device).type == "cuda" and nproc > torch.cuda.device_count():
        raise ValueError(f"{nproc} processes requested on {device!r} but only "
                         f"{torch.cuda.device_count()} CUDA device(s) are visible "
                         "(one process per GPU with nccl)")


def init_from_env(device: str = "auto") -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Returns ``(rank, world_size)``; ``(0, 1)`` without ``torchrun``. The backend follows the
    device: nccl when the processes run on CUDA (each on GPU ``LOCAL_RANK``, made the current
    device), gloo on CPU, so the same code runs as CPU processes in tests.
    """
    import torch.distributed as dist

    world = env_int("WORLD_SIZE", 1, minimum=1)
    if world > 1 and not dist.is_initialized():
        check_nproc(env_int("LOCAL_WORLD_SIZE", world, minimum=1), device)
        backend = "nccl" if local_device(device).type == "cuda" else "gloo"
        if restart_count() > 0 or "TORCHELASTIC_RUN_ID" in os.environ and \
                int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) > 0:
            dist.init_process_group(backend, store=_fresh_store(), rank=int(os.environ["RANK"]),
                                    world_size=world)
        else:
            dist.init_process_group(backend)
    return rank_and_world()


def _fresh_store(timeout: float = 600.0):
    """A store of this attempt's own, hosted by its rank 0, for a group torchrun may restart.

    torchrun's store outlives a restart with the previous attempt's keys in it, so a rank
    that starts before the new rank 0 can read the dead rank 0's address and fail to connect
    (gloo gives up after three tries, which costs the launch a restart). Here rank 0 publishes
    the address of a new store; a rank that finds a dead one (refused) reads the key again.
    """
    import socket
    import time
    from datetime import timedelta

    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    shared = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                           is_master=False, timeout=timedelta(seconds=timeout))
    key = f"rlhf_edu/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/store"
    if rank == 0:
        store = dist.TCPStore(socket.getfqdn(), 0, world, is_master=True,
                              timeout=timedelta(seconds=timeout), wait_for_workers=False)
        shared.set(key, f"{socket.getfqdn()}:{store.port}")
        return store
    deadline = time.monotonic() + timeout
    while True:
        shared.wait([key])
        host, port = shared.get(key).decode().rsplit(":", 1)
        try:  # a live store answers at once; a dead one is retried until this timeout
            store = dist.TCPStore(host, int(port), world, is_master=False,
                                  timeout=timedelta(seconds=1))
            store.set_timeout(timedelta(seconds=timeout))
            return store
        except (RuntimeError, TimeoutError) as e:  # the previous attempt's rank 0: gone
            if time.monotonic() > deadline:
                raise RuntimeError(f"rank 0's store at {host}:{port} did not answer") from e
            time.sleep(0.2)


def check_process_group(requested: str, device: torch.device) -> None:
    """Raise ``ValueError`` unless the process group fits this rank's ``device``: nccl for
    CUDA, gloo for CPU, one GPU per local process."""
    import torch.distributed as dist

    check_nproc(env_int("LOCAL_WORLD_SIZE", rank_and_world()[1], minimum=1), requested)
    backend = dist.get_backend()
    if (backend == "nccl") != (device.type == "cuda"):
        raise ValueError(f"the process group uses {backend} but this rank computes on {device}; "
                         f"call init_from_env({requested!r}) with the trainer's device")


def rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over ranks (in place, also returned); a no-op in a single process."""
    import torch.distributed as dist

    if rank_and_world()[1] > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def shutdown(wait: bool = True) -> None:
    """Leave the process group cleanly; a no-op outside one (or after leaving it).

    Callers drop their DDP- or FSDP-wrapped models first; collecting garbage before
    ``destroy_process_group`` avoids an abort at interpreter exit that gloo otherwise shows in
    about one run in three, and a barrier keeps a rank from tearing its group down while
    another still uses it (with FSDP, a rank otherwise aborts at exit now and then).
    ``wait=False`` skips the barrier: for a rank that ends on an error, whose peers may have
    stopped already. Left to the interpreter's exit, its group's threads are torn down in no
    set order and the process now and then aborts ("terminate called without an active
    exception", exit code -6) instead of ending with its own code.
    """
    import gc

    import torch.distributed as dist

    gc.collect()
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def local_device(device: str = "auto") -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` for ``"cuda"``/``"auto"`` under torchrun with
    CUDA, else as named. A CUDA device becomes the current one, which collectives such as
    ``all_gather_object`` use to stage their data."""
    dev = select_device(device)
    if dev.type == "cuda":
        if device in ("auto", "cuda") and "LOCAL_RANK" in os.environ:
            dev = select_device(f"cuda:{env_int('LOCAL_RANK', 0)}")
        torch.cuda.set_device(dev)
    return dev


def resolve_placement(placement: str | dict, device: torch.device) -> dict[str, torch.device]:
    """Device of each role: "colocate" puts all four on ``device``; a dict names them.

    Roles missing from the dict stay on ``device``. The actor and the critic must share a
    device: PPO updates them with one loss, and the critic may read the actor's hidden states.
    """
    if placement == "colocate":
        return dict.fromkeys(ROLES, device)
    if not isinstance(placement, dict):
        raise ValueError(f"placement must be 'colocate' or a dict role -> device, "
                         f"got {placement!r}")
    unknown = sorted(set(placement) - set(ROLES))
    if unknown:
        raise ValueError(f"placement names unknown role(s) {unknown}; roles are "
                         f"{', '.join(ROLES)}")
    devices = {role: select_device(str(placement.get(role, device))) for role in ROLES}
    if devices["actor"] != devices["critic"]:
        raise ValueError(f"actor ({devices['actor']}) and critic ({devices['critic']}) must be "
                         "on the same device: one PPO loss updates both")
    return devices


PRECISIONS = ("auto", "bf16", "fp32")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of "
                         f"{', '.join(PRECISIONS)}")


def uses_bf16(device: torch.device, precision: str = "auto") -> bool:
    """Whether ``precision`` means bf16 compute on ``device``.

    ``"auto"``: bf16 on CUDA, fp32 on CPU (CPU runs stay bit-exact and fast); ``"bf16"``: bf16
    on any device, CPU included (slower there, but it runs the GPU's mixed-precision code path
    on a laptop); ``"fp32"``: never.
    """
    check_precision(precision)
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast(device: torch.device, precision: str = "auto"):
    """``torch.autocast`` to bf16 where :func:`uses_bf16` says so, else a disabled context.

    Autocast keeps the trained models' weights in fp32 (the master weights) and runs matmuls in
    bf16; softmax, log-softmax and losses stay in fp32.
    """
    return torch.autocast(device.type, dtype=torch.bfloat16,
                          enabled=uses_bf16(device, precision))


def to_bf16(module: torch.nn.Module) -> torch.nn.Module:
    """Store a frozen module's parameters in bf16 (half the memory); buffers keep their dtype,
    so a reward model's z-normalisation statistics stay in fp32."""
    for p in module.parameters():
        p.data = p.data.to(torch.bfloat16)
    return module


FUSED_ADAM_DEVICES = ("cpu", "cuda")
"""devices whose fused Adam kernel takes float parameters of any precision (torch >= 2.4)"""


def adam(params, lr: float, *, weight_decay: float = 0.0, fused: bool | None = None,
         **hyper) -> torch.optim.Optimizer:
    """Adam over ``params`` (AdamW, decoupled decay, when ``weight_decay`` > 0), on the fused
    kernel when every parameter is a floating-point tensor on a device of
    :data:`FUSED_ADAM_DEVICES`, else the for-loop one. ``fused`` False forces the for-loop Adam,
    True requires the fused one (a one-line ``ValueError`` where it cannot run).

    Fused: one kernel per step for all the tensors instead of about a dozen small operations
    per tensor; the same update up to float rounding (its terms are summed in another order).
    ``hyper``: Adam's other settings (``eps``, ``betas``).
    """
    params = list(params)
    cls = torch.optim.AdamW if weight_decay else torch.optim.Adam
    odd = next((p for p in params if not (p.is_floating_point()
                                          and p.device.type in FUSED_ADAM_DEVICES)), None)
    if fused and odd is not None:
        raise ValueError(f"fused Adam needs floating-point parameters on "
                         f"{' or '.join(FUSED_ADAM_DEVICES)}, got one of {odd.dtype} on "
                         f"{odd.device}")
    use = odd is None if fused is None else fused
    return cls(params, lr=lr, weight_decay=weight_decay, fused=use, **hyper)


# ---------------------------------------------------------------- launching (torchrun)
# ``rlhf-edu train --nproc N`` (and ``--nnodes``) re-runs itself under torchrun; torchrun also
# restarts a group that lost a worker (``--max-restarts``). These helpers build its command
# line, read what it tells a worker about restarts, and turn a failed group into one line.

ELASTIC_MARKER = ".elastic"
"""file in a run directory naming the torchrun launch (its rendezvous id) that started it"""


def parse_endpoint(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` → ``(host, port)``; ``ValueError`` in one line otherwise."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"--rdzv-endpoint must be HOST:PORT with a port in 1..65535, "
                         f"got {text!r}")
    return host, int(port)


def check_launch(nnodes: int, node_rank: int, endpoint: str | None) -> None:
    """Raise ``ValueError`` unless the multi-node flags describe one node of ``nnodes``."""
    if not 0 <= node_rank < nnodes:
        raise ValueError(f"--node-rank {node_rank}: must be in [0, {nnodes}) for --nnodes "
                         f"{nnodes}")
    if nnodes > 1 and endpoint is None:
        raise ValueError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (node 0's address, "
                         "where the nodes meet)")
    if endpoint is not None:
        parse_endpoint(endpoint)


def default_rdzv_id(run_dir: str | os.PathLike) -> str:
    """A rendezvous id every node derives alike from the run directory as written."""
    import hashlib

    digest = hashlib.sha1(os.path.normpath(str(run_dir)).encode()).hexdigest()[:12]
    return f"rlhf-edu-{digest}"


def torchrun_command(nproc: int, argv: list[str], *, nnodes: int = 1, node_rank: int = 0,
                     endpoint: str | None = None, rdzv_id: str | None = None,
                     max_restarts: int = 0, join_timeout: int | None = None) -> list[str]:
    """The torchrun command that runs ``rlhf-edu <argv>`` in ``nproc`` processes on this node,
    one node of ``nnodes`` (c10d rendezvous at ``endpoint``), restarted up to ``max_restarts``
    times; ``join_timeout``: seconds a node waits for the others."""
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nnodes == 1 and endpoint is None:
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={endpoint}", f"--rdzv-id={rdzv_id}"]
    cmd.append(f"--max-restarts={max_restarts}")
    if join_timeout is not None:
        cmd.append(f"--rdzv-conf=join_timeout={join_timeout}")
    return [*cmd, "-m", "rlhf_edu", *argv]


def restart_count() -> int:
    """How many times torchrun has restarted this worker's group (0: the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def mark_elastic_run(run_dir: str | os.PathLike, restarted: bool) -> None:
    """In rank 0 of a first attempt that torchrun may restart (checks passed, nothing trained
    yet): note this launch in the run directory, so a restarted group knows the run there is
    its own to resume, and a later launch does not take it for its own."""
    from pathlib import Path

    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if not restarted and run_id and os.environ.get("RANK") == "0" and \
            int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) > 0:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / ELASTIC_MARKER).write_text(run_id + "\n")


def forget_elastic_run(run_dir: str | os.PathLike, restarted: bool) -> None:
    """In rank 0 of a first attempt whose checks refused the run directory: drop a note an
    earlier launch with the same rendezvous id left there, so this launch's restarts refuse
    it too instead of resuming a run they did not start."""
    from pathlib import Path

    marker = Path(run_dir) / ELASTIC_MARKER
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    try:
        if not restarted and os.environ.get("RANK") == "0" and run_id and \
                marker.read_text().strip() == run_id:
            marker.unlink()
    except OSError:
        pass


def group_restarted() -> bool:
    """Whether this group of ranks is a torchrun restart: any rank's node counted a restart.
    (Each node counts its own: a node whose workers were restarted because another node lost
    one does not count it.) Call it in every rank, in a process group."""
    import torch.distributed as dist

    counts = [0] * rank_and_world()[1]
    if dist.is_available() and dist.is_initialized():
        dist.all_gather_object(counts, restart_count())
    else:
        counts = [restart_count()]
    return max(counts) > 0


def resumes_after_restart(run_dir: str | os.PathLike, restarted: bool) -> bool:
    """Whether this group is a torchrun restart (``restarted``) of the launch that started
    the run in ``run_dir`` (then it continues that run from its last checkpoint by itself)."""
    from pathlib import Path

    if not restarted:
        return False
    try:
        marker = (Path(run_dir) / ELASTIC_MARKER).read_text().strip()
    except OSError:
        return False
    started = any((Path(run_dir) / name).exists() for name in ("config.json", "checkpoint.pt"))
    return started and marker == os.environ.get("TORCHELASTIC_RUN_ID")


def describe_failure(log: str, code: int, log_path: str | os.PathLike) -> tuple[str, int]:
    """One line for a torchrun launch that ended with ``code``, from its log: which rank
    failed (rank 0's error if it has one, else torchrun's first observed failure), its exit
    code, and where the full log is; and the exit code to end with (that rank's)."""
    import re

    errors = dict(re.findall(r"^rlhf-edu \w[\w-]*: rank (\d+): (.*)$", log, re.M))
    codes = dict(re.findall(r"rank\s*: (\d+) \(local_rank.*\n\s*exitcode\s*: (-?\d+)", log))
    first = re.search(r"Root Cause.*?rank\s*: (\d+)", log, re.S)
    if "RendezvousTimeoutError" in log or "RendezvousClosedError" in log:
        what = "the nodes did not all join the rendezvous in time (is every node started?)"
        return f"torchrun failed (exit code {code}): {what}; full log: {log_path}", code
    # rank 0's own error, unless torchrun stopped it (a signal) because another rank failed
    # first: then that one's
    candidates = ["0"] if "0" in errors and int(codes.get("0", 1)) > 0 else []
    candidates += [first.group(1)] if first else []
    rank = next(iter(candidates + list(errors)), None)
    if rank is None:
        last = [line.strip() for line in log.splitlines() if line.strip()]
        what = last[-1] if last else "no output"
        return f"torchrun failed (exit code {code}): {what}; full log: {log_path}", code
    rank_code = int(codes.get(rank, code))
    what = errors.get(rank, "see the log")
    return (f"rank {rank} failed (exit code {rank_code}): {what}; full log: {log_path}",
            rank_code if rank_code > 0 else code)
