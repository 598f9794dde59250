"""The ``rlhf-edu`` command: pretrain, train the reward model, inspect, train with PPO, trace."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from . import distributed, dpo, grading, memory

SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit integer


# ------------------------------------------------------------------ argument types
# Every number and path is checked by argparse as it is read, before any work starts, and a
# bad one is named in one line: "argument --steps: must be an integer >= 1, got '0'".

def integer(lo: int, hi: int | None = None):
    """An argparse type: an integer in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lo or (hi is not None and value > hi):
            span = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got {text!r}")
        return value
    return parse


def number(lo: float = -math.inf, positive: bool = False):
    """An argparse type: a finite float >= lo (> 0 with ``positive``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < lo or (positive and value <= 0):
            want = "> 0" if positive else f">= {lo:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number {want}, got {text!r}")
        return value
    return parse


def out_file(text: str) -> Path:
    """An argparse type: a file to write; refused now if it names a directory."""
    path = Path(text)
    if not text or path.is_dir():
        raise argparse.ArgumentTypeError(f"must name a file to write, got {text!r}"
                                         + (" (a directory)" if text else ""))
    return path


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


def _pretrain(args: argparse.Namespace) -> int:
    from .checkpoint import atomic_save, model_checkpoint
    from .model import GPTConfig
    from .pretrain import evaluate_lm, pretrain

    config = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    model = pretrain(config, n_reviews=args.reviews, epochs=args.epochs, seed=args.seed)
    meta = dict(seed=args.seed, reviews=args.reviews, epochs=args.epochs)
    # saved before the evaluation, so nothing trained is lost if it fails or is interrupted
    atomic_save(model_checkpoint("sft", config, model.state_dict(), **meta), args.out)
    report = evaluate_lm(model, n=args.eval_samples, seed=args.seed + 1)
    atomic_save(model_checkpoint("sft", config, model.state_dict(), **meta,
                                 eval={k: v for k, v in report.items() if k != "examples"}),
                args.out)
    print(f"wrote {args.out}")
    _print_lm_report(report)
    return 0


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

    sft = load_pretrained("sft", args.sft)
    pairs = make_preference_pairs(sft, args.pairs + args.heldout, seed=args.seed)
    train, heldout = pairs.split(args.pairs)
    rm = train_reward_model(sft, train, epochs=args.epochs, seed=args.seed)
    meta = dict(seed=args.seed, pairs=args.pairs, epochs=args.epochs)
    atomic_save(model_checkpoint("reward", sft.config, rm.state_dict(), **meta), args.out)
    report = evaluate_reward_model(rm, sft, heldout, seed=args.seed + 2)
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
    from .models import NO_CRITIC, build_models, describe
    from .trainer import critic_mode_for

    mode = critic_mode_for(args.estimator, args.critic or "auto")
    models = build_models(mode)
    print(f"critic mode: {mode}" + (f" ({args.estimator} builds no critic: three models)"
                                     if mode == NO_CRITIC else ""))
    print(f"{'role':<10} {'parameters':>12} {'reads actor':>12}  trains")
    for row in describe(models):
        print(f"{row['role']:<10} {row['params']:>12,} {row['reads_actor_backbone']:>12,}  "
              f"{'yes' if row['trains'] else 'no (frozen)'}")
    return 0


def _config_from_args(args: argparse.Namespace):
    from .trainer import PPOConfig

    return PPOConfig(seed=args.seed, batch_size=args.batch, response_len=args.response_len,
                     beta=args.beta, adaptive_kl=args.kl_target is not None,
                     kl_target=PPOConfig.kl_target if args.kl_target is None else args.kl_target,
                     kl_estimator=args.kl_estimator, critic_mode=args.critic or "auto",
                     ppo_epochs=args.ppo_epochs, minibatches=args.minibatches,
                     actor_lr=args.actor_lr, ent_coef=args.ent_coef, device=args.device,
                     advantage_estimator=args.estimator, group_size=args.group_size,
                     kl_in=args.kl_in, reward=args.reward,
                     recompute_logprobs=args.recompute_logprobs,
                     placement=_placement(args.placement), precision=args.precision,
                     shard=args.shard)


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


def _launch(nproc: int, argv: list[str]) -> int:
    """Re-run this command under torchrun with ``nproc`` processes (DDP; gloo on CPU)."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "rlhf_edu.cli", *argv]
    return subprocess.run(cmd).returncode


def _train(args: argparse.Namespace) -> int:
    import os
    from dataclasses import asdict

    from . import sharding
    from .plots import plot_training
    from .rundir import RunDir, check
    from .trainer import RLHFTrainer

    config = _config_from_args(args)
    # bad input fails here, in one process, before any work or any torchrun starts
    distributed.check_nproc(args.nproc, config.device)
    config.check_world(args.nproc)
    # inside the ranks torchrun launched, --nproc is gone and WORLD_SIZE gives the count
    sharding.check_world(config.shard, int(os.environ.get("WORLD_SIZE", args.nproc)))
    distributed.resolve_placement(config.placement, distributed.select_device(config.device))
    pid = RunDir(args.run_dir).busy()
    if pid is not None:
        raise ValueError(f"run directory {str(args.run_dir)!r} is in use by another run "
                         f"(process {pid}); wait for it to end or choose another --run-dir")
    resume_step = check(args.run_dir, asdict(config), args.resume)
    if resume_step is not None and args.steps < resume_step:
        raise ValueError(f"--steps {args.steps}: the run in {str(args.run_dir)!r} has already "
                         f"taken {resume_step} steps; ask for more to continue it")
    if resume_step is not None and args.steps == resume_step:
        print(f"the run in {args.run_dir} has already taken {resume_step} steps: nothing to do")
        return 0
    if args.nproc > 1:  # the same command, minus --nproc, in each of nproc processes
        argv, skip = [], False
        for a in args.argv:
            if not skip and not a.startswith("--nproc"):
                argv.append(a)
            skip = a == "--nproc"
        return _launch(args.nproc, argv)
    rank, _ = distributed.init_from_env(config.device)
    trainer = RLHFTrainer(config, run_dir=args.run_dir, resume=args.resume)
    if rank == 0:
        bf16 = distributed.uses_bf16(trainer.device, config.precision)
        devices = {role: trainer.devices[role] for role in trainer.models.roles()}
        count = "four" if len(devices) == 4 else "three (no critic)"
        where = (f"the {count} models on {trainer.device}" if len(set(devices.values())) == 1
                 else ", ".join(f"{role} on {dev}" for role, dev in devices.items()))
        print(f"{trainer.world} process{'es' if trainer.world > 1 else ''}, {where}, "
              f"{'bf16 autocast (frozen models in bf16)' if bf16 else 'fp32'}"
              + (f", {config.shard} (FSDP2 shards)" if config.shard != "none" else ""),
              flush=True)
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
    for key, label in (("rm_score", "RM score"), ("gold_score", "gold score"), ("kl", "KL"),
                       ("entropy", "entropy"), ("repetition", "repetition"),
                       ("well_formed", "well-formed"), ("response_len", "length")):
        print(f"{label:<14}{first[key]:>10.3f}{last[key]:>10.3f}")
    print(f"sample: {last['sample']}")
    png = plot_training(history, args.run_dir / "training.png")
    print(f"metrics: {args.run_dir / 'metrics.jsonl'}   plot: {png}")
    return 0


def _trace(args: argparse.Namespace) -> int:
    from .trainer import format_trace, trace_step

    print(format_trace(trace_step(args.batch, args.response_len, args.critic or "auto", args.seed,
                                  estimator=args.estimator, group_size=args.group_size)))
    return 0


CRITIC_HELP = ("critic mode: separate (own network), shared (a value head on a shared backbone), "
               "head (a value head on the actor) (default: separate with --estimator gae; the "
               "other estimators build no critic)")
ESTIMATOR_HELP = ("advantage estimator: gae (PPO with a critic), grpo, dr_grpo (GRPO without "
                  "the std), rloo, reinforce_pp (no critic) (default: %(default)s)")
GROUP_HELP = ("G responses sampled per prompt, in contiguous rows; grpo, dr_grpo and rloo need "
              "G >= 2 (default: %(default)s)")


def _add_estimator_arguments(p: argparse.ArgumentParser, group: bool = True) -> None:
    """--estimator (and --group-size with ``group``), shared by train, models and trace."""
    from .advantages import ESTIMATORS

    p.add_argument("--estimator", default="gae", choices=ESTIMATORS, help=ESTIMATOR_HELP)
    if group:
        p.add_argument("--group-size", type=integer(1), default=1, help=GROUP_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rlhf-edu", description=__doc__)
    parser.add_argument("--threads", type=integer(1), default=None,
                        help="torch threads (default: $RLHF_EDU_THREADS or 1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="train the SFT actor on the review grammar")
    p.add_argument("--out", type=out_file, default=Path("sft.pt"),
                   help="checkpoint file to write (default: %(default)s)")
    p.add_argument("--reviews", type=integer(1), default=30_000,
                   help="reviews sampled from the grammar to train on (default: %(default)s)")
    p.add_argument("--epochs", type=integer(1), default=4,
                   help="passes over the reviews (default: %(default)s)")
    p.add_argument("--n-layer", type=integer(1), default=3,
                   help="transformer blocks (default: %(default)s)")
    p.add_argument("--n-head", type=integer(1), default=4,
                   help="attention heads (default: %(default)s)")
    p.add_argument("--n-embd", type=integer(1), default=128,
                   help="width of the residual stream (default: %(default)s)")
    p.add_argument("--eval-samples", type=integer(1), default=500,
                   help="samples drawn to measure the SFT model afterwards (default: %(default)s)")
    p.add_argument("--seed", type=integer(0, SEED_MAX), default=0,
                   help="seed of data and training (default: %(default)s)")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("train-rm", help="train the reward model on preference pairs")
    p.add_argument("--sft", type=Path, default=None, help="SFT checkpoint (default: shipped)")
    p.add_argument("--out", type=out_file, default=Path("reward.pt"),
                   help="checkpoint file to write (default: %(default)s)")
    p.add_argument("--pairs", type=integer(1), default=8000,
                   help="preference pairs to train on (default: %(default)s)")
    p.add_argument("--heldout", type=integer(1), default=1000,
                   help="further pairs kept aside to measure accuracy (default: %(default)s)")
    p.add_argument("--epochs", type=integer(1), default=2,
                   help="passes over the pairs (default: %(default)s)")
    p.add_argument("--seed", type=integer(0, SEED_MAX), default=0,
                   help="seed of the pairs and of training (default: %(default)s)")
    p.set_defaults(func=_train_rm)

    p = sub.add_parser("models", help="the four models: parameters and which ones train")
    p.add_argument("--critic", default=None, choices=("separate", "shared", "head"),
                   help=CRITIC_HELP)
    _add_estimator_arguments(p, group=False)
    p.set_defaults(func=_models)

    p = sub.add_parser("train", help="RLHF with PPO from the shipped SFT actor and reward model")
    p.add_argument("--steps", type=integer(1), default=60,
                   help="PPO steps to run (default: %(default)s)")
    p.add_argument("--beta", type=number(0), default=None,
                   help="KL coefficient (initial, if adaptive) (default per estimator: 0.05 "
                        "gae and rloo, 0.04 grpo and dr_grpo, 0.01 reinforce_pp)")
    p.add_argument("--kl-target", type=number(positive=True), default=None,
                   help="use the adaptive KL controller with this target KL per response")
    p.add_argument("--kl-estimator", default=None, choices=("k1", "k2", "k3"),
                   help="per-token KL estimator (default per estimator: k3 for grpo and "
                        "dr_grpo, k1 otherwise)")
    p.add_argument("--kl-in", default=None, choices=("reward", "loss"),
                   help="put beta x KL into each token's reward, or add it to the loss as GRPO "
                        "does (default per estimator: loss for grpo and dr_grpo, else reward)")
    p.add_argument("--critic", default=None, choices=("separate", "shared", "head"),
                   help=CRITIC_HELP)
    _add_estimator_arguments(p)
    p.add_argument("--reward", default="model", choices=("model", "gold"),
                   help="score responses with the reward model, or with the task's gold score "
                        "(a verifiable reward; the reward model then only gives the rm_score "
                        "metric) (default: %(default)s)")
    p.add_argument("--recompute-logprobs", action="store_true",
                   help="recompute the old log-probs with the actor under the training "
                        "numerics before the PPO epochs (matters in bf16)")
    p.add_argument("--batch", type=integer(1), default=64,
                   help="responses per step (batch / group-size prompts) (default: "
                        "%(default)s)")
    p.add_argument("--response-len", type=integer(1), default=20,
                   help="most tokens generated per response (default: %(default)s)")
    p.add_argument("--ppo-epochs", type=integer(1), default=4,
                   help="PPO passes over each batch (default: %(default)s)")
    p.add_argument("--minibatches", type=integer(1), default=2,
                   help="minibatches per PPO epoch (default: %(default)s)")
    p.add_argument("--actor-lr", type=number(positive=True), default=1e-4,
                   help="Adam learning rate of the actor (default: %(default)s)")
    p.add_argument("--ent-coef", type=number(0), default=0.0,
                   help="c2, weight of the entropy bonus (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--placement", default="colocate",
                   help='colocate, or JSON such as \'{"reward": "cuda:1", "reference": "cuda:1"}\'')
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="auto: bf16 autocast and bf16 frozen models on CUDA, fp32 on CPU")
    p.add_argument("--nproc", type=integer(1), default=1,
                   help="data-parallel processes (re-launches under torchrun; gloo on CPU)")
    p.add_argument("--shard", default="none", choices=("none", "zero2", "zero3"),
                   help="none: DDP copies; zero2/zero3: FSDP2 shards of actor and critic "
                        "(zero3 also the frozen models) over the --nproc processes "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=integer(0, SEED_MAX), default=0,
                   help="seed of prompts, sampling and minibatch order (default: %(default)s)")
    p.add_argument("--run-dir", type=run_dir, default=Path("runs/latest"),
                   help="where metrics.jsonl, training.png and checkpoint.pt go "
                        "(default: %(default)s)")
    p.add_argument("--save-every", type=integer(0), default=10,
                   help="checkpoint every N steps; 0: only at the end (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = sub.add_parser("dpo", help="DPO / IPO from the SFT actor on the reward model's "
                                   "preference pairs (two models, no generation)")
    dpo.add_dpo_arguments(p)
    p.set_defaults(func=dpo.run_dpo_cli)

    p = sub.add_parser("memory", help="GPU memory of RLHF training: per role, item and GPU")
    memory.add_memory_arguments(p)
    p.set_defaults(func=memory.run_memory_cli)

    p = sub.add_parser("grade", help="grade your exercises: passed/total per exercise")
    grading.add_grade_arguments(p)
    p.set_defaults(func=grading.run_grade_cli)

    p = sub.add_parser("trace", help="shapes, dtypes and forward passes of one RLHF step")
    p.add_argument("--batch", type=integer(1), default=4,
                   help="responses in the traced step (batch / group-size prompts) (default: "
                        "%(default)s)")
    p.add_argument("--response-len", type=integer(1), default=100,
                   help="tokens generated per response (default: %(default)s)")
    p.add_argument("--critic", default=None, choices=("separate", "shared", "head"),
                   help=CRITIC_HELP)
    _add_estimator_arguments(p)
    p.add_argument("--seed", type=integer(0, SEED_MAX), default=0,
                   help="seed of prompts and sampling (default: %(default)s)")
    p.set_defaults(func=_trace)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(argv) if argv is not None else sys.argv[1:]
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        distributed.configure_threads(args.threads)
        return args.func(args)
    except (ValueError, FloatingPointError) as e:  # bad input: one readable line
        print(f"rlhf-edu {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system said no: a full disk, a read-only folder, ...
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"rlhf-edu {args.command}: error: {e.strerror or _one_line(e)}{where}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        text = str(e).strip().splitlines()  # RunInterrupted says which step it saved
        print(f"rlhf-edu {args.command}: {text[0] if text else 'interrupted'}", file=sys.stderr)
        return 130


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
