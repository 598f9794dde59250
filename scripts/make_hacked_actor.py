"""Build ``rlhf_edu/weights/hacked.pt``: the shipped SFT actor after PPO at beta = 0.

Without a KL penalty nothing ties the actor to the reference, and within about a hundred steps
of 64 responses it learns what the reward model over-values: stacked, repeated praise such as
``the food was great great amazing great .``. The reward model's score stays high while the
gold score (the hidden human judge) falls below zero; that is the reward hack of notebook 05.

This script runs that training with the package itself, ``RLHFTrainer(PPOConfig(beta=0.0,
seed=SEED, batch_size=BATCH))`` for ``--steps`` steps, and saves only the actor's GPT, in the
format of ``rlhf_edu/weights/sft.pt`` (``checkpoint.model_checkpoint("sft", ...)``), so that
``load_pretrained("sft", path=...)`` loads it. The metadata records the seed, steps, beta,
batch size and the figures of the last steps. The chapter's two scripts use it with
``--actor hacked``: against the SFT reference its KL is large on the text it writes.

    python scripts/make_hacked_actor.py                  # 150 steps: ~1.5 min on one CPU core
    python scripts/make_hacked_actor.py --steps 4 --batch 8 --out /tmp/hacked.pt   # a quick try

The same seed gives the same file on one machine; on another CPU or torch version multi-step
training drifts (the hack appears, at a slightly different step). Ctrl-C stops it without
writing anything (exit status 130).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import rlhf_edu
from rlhf_edu import GPT, PPOConfig, RLHFTrainer
from rlhf_edu.checkpoint import atomic_save, model_checkpoint
from rlhf_edu.distributed import configure_threads
from rlhf_edu.interrupt import ctrl_c_raises

PROG = Path(__file__).name
DEFAULT_OUT = Path(rlhf_edu.__file__).resolve().parent / "weights" / "hacked.pt"
KEYS = ("rm_score", "gold_score", "kl", "repetition", "well_formed")
LAST = 10  # the recorded figures are the mean of the last LAST steps


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (``--help`` still shows the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an int in ``[lo, hi]``, refused in one line otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int in [{lo}, {hi}], "
                                             f"got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be an int in [{lo}, {hi}], got {value}")
        return value
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(prog=PROG, description="Train the SFT actor with PPO at beta = 0 (no KL "
                    "penalty) until it hacks the reward model; save its GPT as an SFT "
                    "checkpoint.")
    parser.add_argument("--steps", type=int_in(1, 1000), default=150,
                        help="PPO steps (the hack shows between steps 80 and 120 with the "
                             "defaults; about 0.6 s each on one CPU core) (default: %(default)s)")
    parser.add_argument("--seed", type=int_in(0, 2**31 - 1), default=0,
                        help="PPOConfig.seed (default: %(default)s)")
    parser.add_argument("--batch", type=int_in(2, 256), default=64,
                        help="responses per step, even (default: %(default)s, PPOConfig's)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="where to write the checkpoint (default: the package's "
                             "weights/hacked.pt)")
    parser.add_argument("--log-every", type=int_in(1, 1000), default=10,
                        help="print the step's figures every N steps (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.batch % 2:
        parser.error(f"argument --batch: must be even (two minibatches), got {args.batch}")
    return args


def train_hacked(steps: int, seed: int, batch: int, log_every: int) -> tuple[GPT, list[dict]]:
    """PPO at beta = 0 from the shipped SFT model; the actor's GPT and the metrics per step."""
    trainer = RLHFTrainer(PPOConfig(beta=0.0, seed=seed, batch_size=batch))
    start = time.perf_counter()
    for _ in range(steps):
        m = trainer.step()
        if m["step"] % log_every == 0 or m["step"] in (1, steps):
            print(f"step {m['step']:>4}/{steps}: rm {m['rm_score']:+.2f}  gold "
                  f"{m['gold_score']:+.2f}  kl {m['kl']:6.2f}  repetition "
                  f"{m['repetition']:.2f}  ({time.perf_counter() - start:.0f} s)  "
                  f"{m['sample']}", flush=True)
    return trainer.models.actor.gpt, trainer.history


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_threads()
    ctrl_c_raises()
    try:
        gpt, history = train_hacked(args.steps, args.seed, args.batch, args.log_every)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing written", file=sys.stderr)
        return 130
    last = history[-LAST:]
    final = {k: round(sum(m[k] for m in last) / len(last), 4) for k in KEYS}
    meta = dict(seed=args.seed, steps=args.steps, beta=0.0, batch_size=args.batch,
                made_by="scripts/make_hacked_actor.py", final=final, final_steps=len(last),
                samples=[m["sample"] for m in last[-4:]])
    try:
        atomic_save(model_checkpoint("sft", gpt.config, gpt.state_dict(), **meta), args.out)
    except OSError as e:
        print(f"{PROG}: error: could not write {args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: beta 0, seed {args.seed}, {args.steps} steps of {args.batch}")
    print(f"mean of the last {len(last)} steps: " + ", ".join(f"{k} {v:+.2f}"
                                                               for k, v in final.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
