"""The ``rlhf-edu`` command: pretrain, train the reward model, inspect, train with PPO, trace."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from . import distributed, dpo, grading, memory
from .advantages import METHODS
from .config import (
    METHOD_SETTINGS,
    DPOConfig,
    PPOConfig,
    PretrainConfig,
    RewardModelConfig,
    critic_mode_for,
    method_defaults,
    preflight,
)
from .interrupt import TrainingInterrupted, ctrl_c_raises, save_interrupted
from .validate import (
    check_output_file,
    choices_of,
    derived_seed,
    field_kinds,
    parse_int,
    text_reader,
)

# ------------------------------------------------------------------ argument types
# Every number and path is checked by argparse as it is read, before any work starts, and a
# bad one is named in one line: "argument --steps: must be an integer >= 1, got '0'". The
# readers come from rlhf_edu.validate, with the bounds of the config field behind the flag.

def _arg_type(parse: Callable[[str], object]) -> Callable[[str], object]:
    """``parse``, its ``ValueError`` turned into argparse's own error (which names the flag)."""
    def read(text: str) -> object:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    read.__name__ = getattr(parse, "__name__", "value")
    return read


def integer(lo: int, hi: int | None = None) -> Callable[[str], object]:
    """An argparse type: an integer in [lo, hi]."""
    return _arg_type(parse_int(lo, hi))


def out_file(text: str) -> Path:
    """An argparse type: a file to write (:func:`~rlhf_edu.validate.check_output_file`), so a
    command refuses an --out it could not write before any work, not after training."""
    return _arg_type(lambda t: check_output_file("", t))(text)


def run_dir(text: str) -> Path:
    """An argparse type: a run directory (not empty, not an existing file)."""
    path = Path(text)
    if not text or (path.exists() and not path.is_dir()):
        raise argparse.ArgumentTypeError(f"must name a directory, got {text!r}"
                                         + (" (a file)" if text else ""))
    return path


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors in one line (``--help`` still shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------------ flags from config fields
# A config field is a flag: --field-name, or the flag its metadata names (--batch for
# batch_size). Type, bounds, choices and help all come from the field; a flag left out keeps
# the field's default (the parser's default is None: "not given").


def _flags(f: dataclasses.Field) -> list[str]:
    """The field's flag: its metadata's (``--batch`` for batch_size) or ``--field-name``."""
    return [f.metadata.get("flag") or "--" + f.name.replace("_", "-")]


def _help(f: dataclasses.Field, default: object) -> str:
    """The field's help, its choices' descriptions (the method table's), and its default (a
    method's default for a field left as None)."""
    choices = f.metadata.get("choices")
    choices = choices() if callable(choices) else choices
    text = f.metadata["help"]
    if isinstance(choices, Mapping):  # the choices describe themselves
        text += ": " + "; ".join(f"{k}: {v}" for k, v in choices.items())
    if default is None and f.name in METHOD_SETTINGS:
        text += " (default per estimator: " + ", ".join(
            f"{m} {d[f.name]}" for m, d in method_defaults().items()) + ")"
    elif default is not None:
        text += f" (default: {default})"
    return text.replace("%", "%%")


def add_config_flags(parser: argparse.ArgumentParser, cls: type,
                     only: Iterable[str] | None = None, **defaults: object) -> None:
    """One flag per field of the config dataclass ``cls`` (or of the fields ``only``), built
    from the field's metadata; ``defaults`` replace a field's default for this command."""
    names = list(only) if only is not None else [f.name for f in dataclasses.fields(cls)]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        f = fields[name]
        default = defaults.get(name, f.default)
        kwargs: dict = dict(dest=name, default=None, help=_help(f, default))
        if field_kinds(f)[0] == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            reader = text_reader(f)
            kwargs["type"] = _arg_type(reader) if reader is not None else None
            kwargs["choices"] = choices_of(f.metadata)
            kwargs["metavar"] = None if kwargs["choices"] else name.upper()
        parser.add_argument(*_flags(f), **kwargs)
    parser.set_defaults(config_class=cls, config_defaults=defaults)


def _placement(text: str) -> str | dict:
    if text == "colocate":
        return text
    try:
        placement = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--placement must be 'colocate' or a JSON map role -> device, "
                         f"got {text!r}") from e
    if not isinstance(placement, dict):
        raise ValueError(f"--placement must be 'colocate' or a JSON object, got {text!r}")
    return placement


PARSERS: dict[str, Callable[[str], object]] = {"placement": _placement}
"""fields whose command-line text is parsed after argparse (its error is one line too)"""


def config_from_args(args: argparse.Namespace, cls: type | None = None) -> object:
    """The config of ``cls`` (default: the command's) from the flags given; a flag whose field
    ``implies`` others sets them too (``--kl-target`` turns ``adaptive_kl`` on)."""
    cls = cls or args.config_class
    values = dict(getattr(args, "config_defaults", {}))
    for f in dataclasses.fields(cls):
        given = getattr(args, f.name, None)
        if given is None:
            continue
        values[f.name] = PARSERS[f.name](given) if f.name in PARSERS else given
        values.update(f.metadata.get("implies", {}))
    return cls(**values)




# ------------------------------------------------------------------ the commands


def _pretrain(args: argparse.Namespace) -> int:
    from .checkpoint import atomic_save, model_checkpoint
    from .model import GPTConfig
    from .pretrain import evaluate_lm, pretrain
    from .rlvr import N_HELDOUT, evaluate_arith

    cfg = config_from_args(args)
    config = GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd)
    meta = dict(seed=cfg.seed, texts=cfg.texts, epochs=cfg.epochs)
    try:
        model = pretrain(config, n_reviews=cfg.texts, epochs=cfg.epochs, seed=cfg.seed,
                         task=cfg.task)
    except TrainingInterrupted as e:  # keep what was trained: save it, then stop
        raise save_interrupted(e, args.out, "sft", task=cfg.task, **meta) from None
    # saved before the evaluation, so nothing trained is lost if it fails or is interrupted
    atomic_save(model_checkpoint("sft", config, model.state_dict(), cfg.task, **meta), args.out)
    seed = derived_seed(cfg.seed, 1)
    if cfg.task == "arith":
        report = evaluate_arith(model, n=max(1, cfg.eval_samples // N_HELDOUT), seed=seed)
    else:
        report = evaluate_lm(model, n=cfg.eval_samples, seed=seed)
    kept = {k: v for k, v in report.items() if k not in ("examples", "correct")}
    atomic_save(model_checkpoint("sft", config, model.state_dict(), cfg.task, **meta,
                                 eval=kept), args.out)
    print(f"wrote {args.out}")
    (_print_arith_report if cfg.task == "arith" else _print_lm_report)(report)
    return 0


def _print_arith_report(r: dict) -> None:
    print(f"{r['problems']} held-out problems x {r['n']} samples at temperature 1:")
    print(f"  pass@1 (verified)  {r['pass@1']:7.1%}")
    print(f"  lax verifier       {r['lax']:7.1%}")
    print(f"  worked answers     {r['worked']:7.1%}")
    print(f"  hedged answers     {r['hedged']:7.1%}")
    print(f"  never solved       {r['never']:7d}")
    for t in r["examples"]:
        print(f"    {t}")


def _print_lm_report(r: dict) -> None:
    print(f"{r['n']} samples at temperature 1:")
    print(f"  well-formed        {r['well_formed']:7.1%}")
    print(f"  reached <eos>      {r['finished']:7.1%}")
    print(f"  repeat a word      {r['repeat_rate']:7.1%}")
    print(f"  mean gold score    {r['gold']:+7.3f}   (corpus {r['corpus_gold']:+.3f})")
    mix = "  ".join(f"{k} {v:.0%}" for k, v in r["mix"].items())
    cmix = "  ".join(f"{k} {v:.0%}" for k, v in r["corpus_mix"].items())
    print(f"  sentiment mix      {mix}   (corpus {cmix})")
    for t in r["examples"]:
        print(f"    {t}")


def _train_rm(args: argparse.Namespace) -> int:
    from .checkpoint import atomic_save, model_checkpoint
    from .models import load_pretrained
    from .reward_model import evaluate_reward_model, make_preference_pairs, train_reward_model

    cfg = config_from_args(args)
    sft = load_pretrained("sft", args.sft)
    pairs = make_preference_pairs(sft, cfg.pairs + cfg.heldout, seed=cfg.seed)
    train, heldout = pairs.split(cfg.pairs)
    meta = dict(seed=cfg.seed, pairs=cfg.pairs, epochs=cfg.epochs)
    try:
        rm = train_reward_model(sft, train, epochs=cfg.epochs, seed=cfg.seed)
    except TrainingInterrupted as e:  # keep what was trained (not normalised): save it, stop
        raise save_interrupted(e, args.out, "reward", **meta, normalised=False) from None
    atomic_save(model_checkpoint("reward", sft.config, rm.state_dict(), **meta), args.out)
    report = evaluate_reward_model(rm, sft, heldout, seed=derived_seed(cfg.seed, 2))
    atomic_save(model_checkpoint("reward", sft.config, rm.state_dict(), **meta, eval=report),
                args.out)
    print(f"wrote {args.out}")
    print(f"held-out pairwise accuracy vs gold  {report['accuracy']:.1%} "
          f"({report['n_heldout']} pairs with different gold)")
    print(f"correlation with gold on SFT samples {report['gold_correlation']:+.3f}")
    print(f"median z-score of well-formed SFT samples {report['median_well_formed']:+.2f}; "
          "degenerate texts:")
    for text, score in report["hack_scores"].items():
        print(f"  {score:+6.2f}  {text}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from .models import build_models, describe

    estimator = args.advantage_estimator or "gae"
    mode = critic_mode_for(estimator, args.critic_mode or "auto")
    task = args.task or "reviews"
    models = build_models(mode, task=task)
    if models.reward is None:
        print(f"task {task}: a verifier scores the responses, no reward model")
    print(f"critic mode: {mode}" + (f" ({estimator} builds no critic: three models)"
                                     if not METHODS[estimator].needs_critic else ""))
    print(f"{'role':<10} {'parameters':>12} {'reads actor':>12}  trains")
    for row in describe(models):
        print(f"{row['role']:<10} {row['params']:>12,} {row['reads_actor_backbone']:>12,}  "
              f"{'yes' if row['trains'] else 'no (frozen)'}")
    return 0


LAUNCH_FLAGS = ("--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint", "--rdzv-id",
                "--rdzv-timeout", "--max-restarts")
"""the flags of ``rlhf-edu train`` that say how to launch it, not what to train"""


def _launch(args: argparse.Namespace) -> int:
    """Re-run this command under torchrun: ``--nproc`` processes on this node (DDP or FSDP2;
    gloo on CPU), one node of ``--nnodes``, restarted up to ``--max-restarts`` times.

    The ranks' stdout stays on the console (rank 0 prints the summary); their stderr and
    torchrun's own report go to ``launch.log`` in the run directory, and a failure is told
    in one line naming the rank, its exit code and that file.
    """
    import subprocess

    argv, skip = [], False
    for a in args.argv:  # the same command, minus the launcher's flags
        if not skip and a.split("=")[0] not in LAUNCH_FLAGS:
            argv.append(a)
        skip = not skip and a in LAUNCH_FLAGS
    cmd = distributed.torchrun_command(
        args.nproc, argv, nnodes=args.nnodes, node_rank=args.node_rank,
        endpoint=args.rdzv_endpoint,
        rdzv_id=args.rdzv_id or distributed.default_rdzv_id(args.run_dir),
        max_restarts=args.max_restarts, join_timeout=args.rdzv_timeout)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    log = args.run_dir / ("launch.log" if args.nnodes == 1 else
                          f"launch-node{args.node_rank}.log")
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stderr=f)
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:  # the ranks got the Ctrl-C too: let them save and stop
                continue
    if code == 0:
        return 0
    text = log.read_text(errors="replace")
    line, code = distributed.describe_failure(text, code, log)
    print(f"rlhf-edu train: {line}", file=sys.stderr)
    return code


def _train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    # bad input fails here, in one process, before any work or any torchrun starts; inside
    # the ranks torchrun launched, the launcher's flags are gone and WORLD_SIZE gives the count
    distributed.check_launch(args.nnodes, args.node_rank, args.rdzv_endpoint)
    launcher = "WORLD_SIZE" not in os.environ
    world = args.nnodes * args.nproc if launcher else int(os.environ["WORLD_SIZE"])
    restarted = False
    if not launcher:  # the ranks meet first: whether they are a restart is decided together
        distributed.init_from_env(config.device)
        restarted = distributed.group_restarted()
    # a group torchrun restarted after losing a worker continues its own run by itself
    args.resume = args.resume or distributed.resumes_after_restart(args.run_dir, restarted)
    try:
        resume_step = preflight(config, world, nproc=args.nproc, run_dir=args.run_dir,
                                resume=args.resume)
    except ValueError:
        distributed.forget_elastic_run(args.run_dir, restarted)  # its restarts refuse it too
        raise
    if resume_step is not None and args.steps < resume_step:
        raise ValueError(f"--steps {args.steps}: the run in {str(args.run_dir)!r} has already "
                         f"taken {resume_step} steps; ask for more to continue it")
    if resume_step is not None and args.steps == resume_step:
        if os.environ.get("RANK", "0") == "0":
            print(f"the run in {args.run_dir} has already taken {resume_step} steps: "
                  "nothing to do")
        distributed.shutdown()
        return 0
    distributed.mark_elastic_run(args.run_dir, restarted)  # a restart may resume the run
    if launcher and (world > 1 or args.max_restarts > 0 or args.rdzv_endpoint):
        return _launch(args)
    return _run_training(config, args)


def _run_training(config: PPOConfig, args: argparse.Namespace) -> int:
    """This process's part of ``rlhf-edu train``: train, then (rank 0) the summary and plot."""
    from .plots import plot_training
    from .trainer import RLHFTrainer

    rank, _ = distributed.init_from_env(config.device)
    trainer = RLHFTrainer(config, run_dir=args.run_dir, resume=args.resume)
    if rank == 0:
        _print_setup(trainer)
    if args.resume and trainer.step_count == 0 and rank == 0:
        print(f"{args.run_dir} has no checkpoint yet: the run starts again from step 0",
              flush=True)
    history = trainer.train(args.steps, save_every=args.save_every, progress=not args.quiet)
    trainer.ddp = None
    trainer.close()
    del trainer
    distributed.shutdown()
    if rank != 0:
        return 0
    first, last = history[0], history[-1]
    print(f"\n{'':<14}{'step ' + str(first['step']):>10}{'step ' + str(last['step']):>10}")
    for key, label in SUMMARY:
        if key in first and key in last:
            print(f"{label:<14}{first[key]:>10.3f}{last[key]:>10.3f}")
    print(f"sample: {last['sample']}")
    png = plot_training(history, args.run_dir / "training.png")
    print(f"metrics: {args.run_dir / 'metrics.jsonl'}   plot: {png}")
    return 0


SUMMARY = (("rm_score", "RM score"), ("gold_score", "gold score"), ("lax_score", "lax score"),
           ("kl", "KL"), ("entropy", "entropy"), ("repetition", "repetition"),
           ("well_formed", "well-formed"), ("worked", "worked"), ("hedged", "hedged"),
           ("response_len", "length"))
"""the rows of ``rlhf-edu train``'s before/after table (those the task's metrics have)"""


def _print_setup(trainer) -> None:
    """One line: processes, where the models are, the numerics."""
    config = trainer.config
    bf16 = distributed.uses_bf16(trainer.device, config.precision)
    devices = {role: trainer.devices[role] for role in trainer.models.roles()}
    notes = [text for role, text in (("critic", "no critic"),
                                     ("reward", "a verifier, no reward model"))
             if role not in devices]
    count = {4: "four", 3: "three", 2: "two"}[len(devices)] + " models"
    count += f" ({'; '.join(notes)})" if notes else ""
    where = (f"the {count} on {trainer.device}" if len(set(devices.values())) == 1
             else ", ".join(f"{role} on {dev}" for role, dev in devices.items()))
    print(f"{trainer.world} process{'es' if trainer.world > 1 else ''}, {where}, "
          f"{'bf16 autocast (frozen models in bf16)' if bf16 else 'fp32'}"
          + (f", {config.shard} (FSDP2 shards)" if config.shard != "none" else ""),
          flush=True)


def _trace(args: argparse.Namespace) -> int:
    from .trainer import format_trace, trace_step

    cfg = dict(args.config_defaults)
    cfg.update({k: v for k, v in vars(args).items() if k in TRACED and v is not None})
    print(format_trace(trace_step(cfg["batch_size"], cfg["response_len"],
                                  cfg.get("critic_mode", "auto"), cfg.get("seed", 0),
                                  estimator=cfg.get("advantage_estimator", "gae"),
                                  group_size=cfg.get("group_size", 1))))
    return 0


def _dpo(args: argparse.Namespace) -> int:
    return dpo.run_dpo(config_from_args(args), args.out, progress=not args.quiet)


TRACED = ("batch_size", "response_len", "critic_mode", "advantage_estimator", "group_size",
          "seed")
"""the PPOConfig fields ``rlhf-edu trace`` takes"""


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="train the SFT actor on a task's data (reviews, arith)")
    p.add_argument("--out", type=out_file, default="sft.pt",
                   help="checkpoint file to write (default: %(default)s)")
    add_config_flags(p, PretrainConfig)
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("train-rm", help="train the reward model on preference pairs")
    p.add_argument("--sft", type=Path, default=None, help="SFT checkpoint (default: shipped)")
    p.add_argument("--out", type=out_file, default="reward.pt",
                   help="checkpoint file to write (default: %(default)s)")
    add_config_flags(p, RewardModelConfig)
    p.set_defaults(func=_train_rm)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="RLHF with PPO from the shipped SFT actor and reward model")
    p.add_argument("--steps", type=integer(1), default=60,
                   help="PPO steps to run (default: %(default)s)")
    add_config_flags(p, PPOConfig)
    p.add_argument("--nproc", type=integer(1), default=1,
                   help="data-parallel processes on this node (re-launches under torchrun; "
                        "gloo on CPU)")
    p.add_argument("--nnodes", type=integer(1), default=1,
                   help="machines taking part; start the same command on each with its "
                        "--node-rank (default: %(default)s)")
    p.add_argument("--node-rank", type=integer(0), default=0,
                   help="this machine's number, 0 .. nnodes-1 (default: %(default)s)")
    p.add_argument("--rdzv-endpoint", default=None, metavar="HOST:PORT",
                   help="where the nodes meet (c10d rendezvous): node 0's address and a free port")
    p.add_argument("--rdzv-id", default=None,
                   help="the job's rendezvous id, the same on every node (default: derived from "
                        "--run-dir)")
    p.add_argument("--rdzv-timeout", type=integer(1), default=None, metavar="SECONDS",
                   help="how long a node waits for the others to join (default: torchrun's, "
                        "600)")
    p.add_argument("--max-restarts", type=integer(0), default=0,
                   help="times torchrun restarts the group after a worker dies; the restarted "
                        "ranks resume from the last checkpoint (default: %(default)s)")
    p.add_argument("--run-dir", type=run_dir, default=Path("runs/latest"),
                   help="where metrics.jsonl, training.png and checkpoint.pt go "
                        "(default: %(default)s)")
    p.add_argument("--save-every", type=integer(0), default=10,
                   help="checkpoint every N steps; 0: only at the end (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rlhf-edu", description=__doc__)
    parser.add_argument("--threads", type=integer(1), default=None,
                        help="torch threads (default: $RLHF_EDU_THREADS or 1)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_pretrain(sub)

    p = sub.add_parser("models", help="the four models: parameters and which ones train")
    add_config_flags(p, PPOConfig, only=("task", "critic_mode", "advantage_estimator"))
    p.set_defaults(func=_models)
    _add_train(sub)

    p = sub.add_parser("dpo", help="DPO / IPO from the SFT actor on the reward model's "
                                   "preference pairs (two models, no generation)")
    add_config_flags(p, DPOConfig)
    p.add_argument("--out", type=out_file, default="dpo.pt",
                   help="checkpoint of the trained policy, loadable as an SFT actor "
                        "(load_pretrained('sft', path)) (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_dpo)

    p = sub.add_parser("memory", help="GPU memory of RLHF training: per role, item and GPU")
    memory.add_memory_arguments(p)
    p.set_defaults(func=memory.run_memory_cli)

    p = sub.add_parser("grade", help="grade your exercises: passed/total per exercise")
    grading.add_grade_arguments(p)
    p.set_defaults(func=grading.run_grade_cli)

    p = sub.add_parser("trace", help="shapes, dtypes and forward passes of one RLHF step")
    add_config_flags(p, PPOConfig, only=TRACED, batch_size=4, response_len=100)
    p.set_defaults(func=_trace)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(argv) if argv is not None else sys.argv[1:]
    args = parser.parse_args(argv)
    args.argv = argv
    ctrl_c_raises()  # started with Ctrl-C ignored (a background job): it still stops the run
    # a rank torchrun launched names itself, so the launcher can say which one failed
    rank = f"rank {os.environ['RANK']}: " if "TORCHELASTIC_RUN_ID" in os.environ else ""
    try:
        distributed.configure_threads(args.threads)
        return args.func(args)
    except (ValueError, FloatingPointError) as e:  # bad input: one readable line
        _say(f"rlhf-edu {args.command}: {rank}error: {_one_line(e)}")
        return 2
    except OSError as e:  # the file system said no: a full disk, a read-only folder, ...
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        _say(f"rlhf-edu {args.command}: {rank}error: {e.strerror or _one_line(e)}{where}")
        return 1
    except Exception as e:  # a rank's unexpected error: its line for the launcher, then raise
        if rank:
            _say(f"rlhf-edu {args.command}: {rank}{type(e).__name__}: {_one_line(e)}")
        raise
    except KeyboardInterrupt as e:
        text = str(e).strip().splitlines()  # RunInterrupted says which step it saved
        _say(f"rlhf-edu {args.command}: {rank}{text[0] if text else 'interrupted'}")
        return 130
    finally:
        if rank:  # a rank that stops on an error leaves its group now, to exit with its code
            distributed.shutdown(wait=False)


def _say(line: str) -> None:
    """One line to stderr in one write: ranks share the launcher's log, and a line written in
    two pieces (text, then its newline) can interleave with another rank's."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
