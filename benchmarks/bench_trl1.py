"""GRPO and DPO throughput: TRL 1.x's ``GRPOTrainer`` and ``DPOTrainer`` against ours, on CPU.

    python benchmarks/bench_trl1.py [--method grpo dpo] [--steps 6] [--warmup 2] [--repeats 5]

TRL 1.x needs its own environment (the PPO comparison, ``bench_trl.py``, pins TRL 0.29.1):

    python3 -m venv /tmp/trl1
    /tmp/trl1/bin/pip install torch==2.13.0
    /tmp/trl1/bin/pip install "trl>=1,<2" transformers accelerate datasets
    /tmp/trl1/bin/pip install -e .          # this package, with its dependencies
    /tmp/trl1/bin/python benchmarks/bench_trl1.py

(``run_all.py`` runs this script with the interpreter named by ``RLHF_TRL1_PYTHON``.)

Both sides use the toy GPT-2 shape of the shipped models (3 layers, 4 heads, width 128,
vocabulary 64, context 48), fp32, one thread, no gradient checkpointing (TRL's configs default
to it and to bf16: both are turned off so the two sides do the same arithmetic). TRL gets
``GPT2LMHeadModel``s built from that configuration (random weights, no hub) and a word-level
tokenizer built in memory over the task's words (padded to 64 ids like our embedding).

**GRPO** (episodes = completions per second). Per step: B = 64 completions, G = 8 per prompt
(8 prompts), exactly 16 sampled tokens each (no stop token on either side: TRL gets
``min_new_tokens=16``), temperature 1, 4 passes x 2 minibatches of 32 = 8 optimiser steps per
batch (TRL: ``num_iterations=4``, ``steps_per_generation=2``, ``per_device_train_batch_size=32``),
k3 KL to a reference in the loss with beta 0.04 (so both sides load and run a reference), group
advantages ``(r - mean) / (std + 1e-4)``. The reward is the shipped reward model on both sides:
TRL calls a Python reward function that rebuilds ``<bos> prompt completion`` from TRL's
completion ids and runs our reward model on it. What cannot be matched exactly:

* TRL recomputes the "old" log-probs with one extra forward pass after generation whenever a
  batch feeds more than one optimiser step; ours by default keeps the log-probs of sampling.
  Ours is timed both ways (``recompute_logprobs`` off, and on = TRL's work).
* TRL's default loss aggregation is "dapo" (token mean over the whole minibatch); ours is its
  own masked mean: the same arithmetic order of magnitude, not the same formula.
* TRL's reward function gets decoded text and ids (its API); ours scores the token tensor.

How GRPO is timed: ``GRPOTrainer.train()`` runs ``(warmup + steps) x 8`` optimiser steps; a
callback at the end of every 8th (one generation and its 8 updates) runs one step of each of
our variants and times it, so the trainers alternate batch by batch and share the machine's
load. A TRL batch is the time from the end of our previous step to the end of its 8th update.

**DPO** (pairs per second). ``--pairs`` preference pairs (default 512) of the reward model's
kind (``make_dpo_pairs``: two SFT samples per prompt, Bradley-Terry labels), batch 32, one
epoch, beta 0.1, sigmoid loss, Adam lr 1e-4, gradient clipping 1.0, the same token sequences
on both sides (TRL's text is built from our ids; a response that never reached ``<eos>`` gets
one from TRL, so its token count is printed beside ours). Ours: one ``train_dpo`` call (which
computes the reference log-probs once, then trains); TRL: one ``DPOTrainer.train()`` (reference
log-probs per batch, ``precompute_ref_log_probs=False``: the same reference forwards over one
epoch). Each repeat builds a fresh trainer (dataset tokenisation is set-up, not timed), and the
whole runs alternate, TRL then ours then ours then TRL, median of ``--repeats`` after one
warm-up each.

Writes ``results/trl_grpo.json`` and ``results/trl_dpo.json``.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
import warnings

import _common
import torch
from ppo_budget import kernel_seconds

from rlhf_edu.models import load_pretrained
from rlhf_edu.task import PROMPTS, VOCAB, Tokenizer

BATCH, GROUP, RESPONSE_LEN, EPOCHS, MINIBATCHES, GRPO_BETA = 64, 8, 16, 4, 2, 0.04
DPO_BATCH, DPO_BETA, LR = 32, 0.1, 1e-4
TARGET = 1.4
EQUAL_WORK = "rlhf_edu GRPO, recompute_logprobs"
"""our variant that does TRL's work: the old log-probs recomputed by a forward pass"""


def check_trl() -> str:
    """TRL's version; a one-line error unless it is 1.x (GRPOTrainer, DPOTrainer stable)."""
    try:
        import trl
    except ImportError:
        raise SystemExit("bench_trl1.py needs TRL 1.x (pip install 'trl>=1,<2' in its own venv: "
                         "see this script's docstring)") from None
    if int(trl.__version__.split(".")[0]) != 1:
        raise SystemExit(f"bench_trl1.py needs TRL 1.x, found trl {trl.__version__} (the PPO "
                         "benchmark pins 0.29.1: use a separate venv, see the docstring)")
    return trl.__version__


def word_tokenizer(size: int):
    """A Hugging Face fast tokenizer over the task's words, padded with unused words to ``size``
    ids (so every id a ``size``-row embedding can sample decodes), built without the hub."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    words = list(VOCAB) + [f"<unused-{i}>" for i in range(len(VOCAB), size)]
    raw = RawTokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    raw.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", padding_side="left")


def gpt2_config():
    """The GPT-2 configuration of the shipped toy GPT (and that GPT's own config)."""
    from transformers import GPT2Config

    c = load_pretrained("sft").config
    config = GPT2Config(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
                        vocab_size=c.vocab_size, n_positions=c.block_size,
                        activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return config, c


def quiet_trl() -> None:
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    datasets.disable_progress_bars()


def drop_printers(trainer) -> None:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)


COMMON_ARGS = dict(report_to="none", save_strategy="no", logging_strategy="no", use_cpu=True,
                   bf16=False, gradient_checkpointing=False, seed=0, gradient_accumulation_steps=1,
                   dataloader_num_workers=0, disable_tqdm=True, learning_rate=LR,
                   max_grad_norm=1.0)


# ------------------------------------------------------------------ GRPO


def reward_function(rm, tok: Tokenizer, length: int):
    """TRL reward function: our reward model on ``<bos> prompt completion`` ids, right-padded;
    returns one float per completion (TRL's reward-function API). Every completion must have
    ``length`` ids (the two sides sample the same number of tokens)."""

    def score(prompts: list[str], completions: list[str], completion_ids: list[list[int]],
              **kwargs) -> list[float]:
        lengths = sorted({len(c) for c in completion_ids})
        if lengths != [length]:
            raise RuntimeError(f"TRL sampled completions of {lengths} tokens, expected {length}")
        rows = [tok.encode(p.removeprefix("<bos> "), bos=True) + list(c)
                for p, c in zip(prompts, completion_ids)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_id, dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, :len(r)] = torch.tensor(r)
        valid = torch.arange(width)[None, :] < torch.tensor([len(r) for r in rows])[:, None]
        with torch.no_grad():
            return rm(ids, valid).tolist()
    return score


def our_grpo(recompute: bool):
    from rlhf_edu.trainer import PPOConfig, RLHFTrainer

    return RLHFTrainer(PPOConfig(
        advantage_estimator="grpo", group_size=GROUP, batch_size=BATCH, response_len=RESPONSE_LEN,
        stop_at_eos=False, ppo_epochs=EPOCHS, minibatches=MINIBATCHES, kl_in="loss",
        kl_estimator="k3", beta=GRPO_BETA, temperature=1.0, actor_lr=LR,
        recompute_logprobs=recompute, seed=0))


def bench_grpo(args, info: dict, trl_version: str, with_ours: bool) -> dict:
    import datasets
    from transformers import GPT2LMHeadModel, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    config, shape = gpt2_config()
    tok = word_tokenizer(config.vocab_size)
    ours_tok = Tokenizer()
    assert tok("<bos> the food was")["input_ids"] == ours_tok.encode("the food was", bos=True)
    updates = EPOCHS * MINIBATCHES  # optimiser steps per generated batch
    total = args.warmup + args.steps
    prompts = [f"<bos> {PROMPTS[i % len(PROMPTS)]}" for i in range(BATCH // GROUP * total)]
    dataset = datasets.Dataset.from_dict({"prompt": prompts})
    ours = {}
    if with_ours:
        ours = {"rlhf_edu GRPO": our_grpo(False), EQUAL_WORK: our_grpo(True)}
        for trainer in ours.values():
            c = trainer.models.actor.gpt.config
            assert (c.n_layer, c.n_head, c.n_embd, c.vocab_size) == (
                shape.n_layer, shape.n_head, shape.n_embd, shape.vocab_size)

    class Interleave(TrainerCallback):
        """After every ``updates``-th TRL step: note the time, run and time one step of ours."""

        def __init__(self):
            self.trl_ends, self.ours_ends, self.start = [], [], None
            self.ours = {name: [] for name in ours}
            self.phases = {name: [] for name in ours}

        def on_train_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, args_, state, *a, **k):
            if state.global_step % updates:
                return
            self.trl_ends.append(time.perf_counter())
            names, r = list(ours), len(self.trl_ends) % max(len(ours), 1)
            for name in names[r:] + names[:r]:  # rotate the order of our variants
                t0 = time.perf_counter()
                metrics = ours[name].step()
                self.ours[name].append(time.perf_counter() - t0)
                self.phases[name].append({k: v for k, v in metrics.items()
                                          if k.startswith("time_") and k != "time_step"})
            self.ours_ends.append(time.perf_counter())

    clock = Interleave()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as out:
        # TRL builds the reference from the policy's path, so the policy goes through a folder
        GPT2LMHeadModel(config).save_pretrained(f"{out}/policy")
        grpo_config = GRPOConfig(
            output_dir=f"{out}/run", **COMMON_ARGS,
            per_device_train_batch_size=BATCH // MINIBATCHES, steps_per_generation=MINIBATCHES,
            num_iterations=EPOCHS, num_generations=GROUP,
            max_completion_length=RESPONSE_LEN, generation_kwargs={"min_new_tokens": RESPONSE_LEN},
            temperature=1.0, beta=GRPO_BETA, epsilon=0.2, max_steps=total * updates,
            log_completions=False)
        reward = reward_function(load_pretrained("reward"), ours_tok, RESPONSE_LEN)
        trainer = GRPOTrainer(model=f"{out}/policy", reward_funcs=reward, args=grpo_config,
                              train_dataset=dataset, processing_class=tok, callbacks=[clock])
        drop_printers(trainer)
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
    assert torch.get_num_threads() == info["torch_threads"], "something changed torch's threads"
    # the floor of our equal-work step: the time of its model kernels alone (profiled)
    kernels = kernel_seconds(ours[EQUAL_WORK].step)[0] if with_ours else None
    return grpo_report(args, info, trl_version, clock, wall, shape, with_ours, kernels)


def grpo_report(args, info: dict, trl_version: str, clock, wall: float, shape,
                with_ours: bool, kernels: float | None) -> dict:
    """Print the GRPO table and the README row; the result ``trl_grpo.json`` holds."""
    import transformers

    starts = [clock.start] + clock.ours_ends[:-1]
    trl_steps = [end - start for start, end in zip(starts, clock.trl_ends)]
    timed = slice(args.warmup, None)
    rows = [{"name": f"TRL {trl_version} GRPOTrainer", "steps": trl_steps}]
    rows += [{"name": name, "steps": steps} for name, steps in clock.ours.items()]
    for row in rows:
        row["s"] = _common.median(row["steps"][timed])
        row["eps"] = BATCH / row["s"]
    for row in rows:
        row["ratio"] = row["eps"] / rows[0]["eps"]
    phases = {name: {k: _common.median([p[k] for p in ps[timed]]) for k in ps[0]}
              for name, ps in clock.phases.items()}
    print(f"\nGRPO throughput, batch {BATCH} completions ({BATCH // GROUP} prompts x G={GROUP}), "
          f"{RESPONSE_LEN} new tokens, {EPOCHS} passes x {MINIBATCHES} minibatches, k3 KL in the "
          f"loss (beta {GRPO_BETA}); model {shape.n_layer} layers, {shape.n_head} heads, width "
          f"{shape.n_embd}, vocabulary {shape.vocab_size}; median of {args.steps} batches after "
          f"{args.warmup} warm-up, alternating")
    print(_common.machine_line(info))
    print(f"transformers {transformers.__version__}, trl {trl_version}, fp32, no gradient "
          f"checkpointing; whole TRL train() call {wall:.1f} s including ours")
    print(_common.format_table(rows, [("name", "trainer", "s"), ("s", "s/batch", ".3f"),
                                      ("eps", "episodes/s", ".1f"), ("ratio", "vs TRL", ".2f")]))
    for name, p in phases.items():
        print(f"{name} by phase (median s): " + ", ".join(
            f"{k.removeprefix('time_')} {v:.3f}" for k, v in p.items()))
    result = {"machine": info, "transformers": transformers.__version__, "trl": trl_version,
              "batch": BATCH, "group_size": GROUP, "response_len": RESPONSE_LEN,
              "ppo_epochs": EPOCHS, "minibatches": MINIBATCHES, "beta": GRPO_BETA,
              "warmup": args.warmup, "trl_train_wall_s": wall,
              "rows": [{k: r[k] for k in ("name", "steps", "s", "eps", "ratio")} for r in rows],
              "ours_phases": phases}
    if with_ours:  # the equal-work figure leads: TRL always recomputes the old log-probs
        ratio = next(r["ratio"] for r in rows if r["name"] == EQUAL_WORK)
        default = next(r["ratio"] for r in rows if r["name"] == "rlhf_edu GRPO")
        ceiling = rows[0]["s"] / kernels
        result.update(ratio=ratio, ratio_default=default, target=TARGET,
                      target_met=ratio >= TARGET, ours_kernel_s=kernels, ceiling=ceiling)
        print(f"target: ours at equal work (recompute_logprobs) >= {TARGET:g}x TRL's "
              f"episodes/s: {'met' if ratio >= TARGET else 'NOT met'} ({ratio:.2f}x)")
        print(f"ceiling: our equal-work step spends {kernels:.3f} s in the model's kernels "
              f"(matmuls, attention, GELU, layer norm, Adam; profiled): with nothing else, "
              f"{ceiling:.2f}x TRL")
        print("README row:\n"
              f"| GRPO vs TRL {trl_version} `GRPOTrainer` ({BATCH} completions = "
              f"{BATCH // GROUP} prompts × G {GROUP}, {RESPONSE_LEN} tokens, {EPOCHS} × "
              f"{MINIBATCHES} minibatches, k3 in the loss{_common.load_note(info)}), equal "
              "work: ours with "
              f"`recompute_logprobs`, the old-log-prob forward TRL always does | "
              f"**{ratio:.2f}× TRL's throughput** ({default:.2f}× with our default, which "
              f"skips that forward); {ceiling:.2f}× if our step were nothing but its model "
              f"kernels; target {TARGET:g}× |")
    return result


# ------------------------------------------------------------------ DPO


def trl_dpo_rows(data) -> dict[str, list[str]]:
    """TRL's preference dataset (prompt, chosen, rejected text) from our pairs' token ids."""
    p = data.pairs
    rows = {"prompt": [], "chosen": [], "rejected": []}
    for i in range(len(data)):
        start = int(data.prompt_len[i])
        chosen = [VOCAB[t] for t in p.chosen[i][p.chosen_valid[i]].tolist()]
        rejected = [VOCAB[t] for t in p.rejected[i][p.rejected_valid[i]].tolist()]
        rows["prompt"].append(" ".join(chosen[:start]))
        # TRL appends "<eos>" as text to a completion that lacks one: give it a word boundary
        rows["chosen"].append(" " + " ".join(chosen[start:] if chosen[-1] == "<eos>"
                                             else chosen[start:] + ["<eos>"]))
        rows["rejected"].append(" " + " ".join(rejected[start:] if rejected[-1] == "<eos>"
                                               else rejected[start:] + ["<eos>"]))
    return rows


def bench_dpo(args, info: dict, trl_version: str, with_ours: bool) -> dict:
    import datasets
    from transformers import GPT2LMHeadModel
    from trl import DPOConfig, DPOTrainer

    from rlhf_edu.dpo import make_dpo_pairs, train_dpo
    from rlhf_edu.model import GPT

    config, shape = gpt2_config()
    tok = word_tokenizer(config.vocab_size)
    sft = load_pretrained("sft")
    data = make_dpo_pairs(sft, args.pairs, seed=0)
    dataset = datasets.Dataset.from_dict(trl_dpo_rows(data))
    ours_tokens = int(data.pairs.chosen_valid.sum() + data.pairs.rejected_valid.sum())
    torch.manual_seed(0)
    policy0 = GPT2LMHeadModel(config)
    tmp = tempfile.TemporaryDirectory()
    trl_tokens = []

    def trl_run():
        trainer = DPOTrainer(
            model=copy.deepcopy(policy0), ref_model=copy.deepcopy(policy0),
            args=DPOConfig(output_dir=tmp.name, **COMMON_ARGS,
                           per_device_train_batch_size=DPO_BATCH, num_train_epochs=1,
                           beta=DPO_BETA, loss_type=["sigmoid"], max_length=None,
                           precompute_ref_log_probs=False),
            train_dataset=dataset, processing_class=tok)
        drop_printers(trainer)
        if not trl_tokens:
            trl_tokens.append(sum(len(r["prompt_ids"]) * 2 + len(r["chosen_ids"]) +
                                  len(r["rejected_ids"]) for r in trainer.train_dataset))
        t0 = time.perf_counter()
        trainer.train()
        return time.perf_counter() - t0

    def ours_run():
        t0 = time.perf_counter()
        train_dpo(sft, data, beta=DPO_BETA, loss="sigmoid", epochs=1, batch_size=DPO_BATCH, lr=LR)
        return time.perf_counter() - t0

    runs = {f"TRL {trl_version} DPOTrainer": trl_run}
    if with_ours:
        assert isinstance(sft, GPT) and sft.config.n_embd == shape.n_embd
        runs["rlhf_edu train_dpo"] = ours_run
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(args.repeats + 1):  # round 0 is the warm-up
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds = runs[name]()
            if r:
                times[name].append(seconds)
    tmp.cleanup()
    assert torch.get_num_threads() == info["torch_threads"], "something changed torch's threads"
    kernels = kernel_seconds(ours_run)[0] if with_ours else None
    return dpo_report(args, info, trl_version, times, (trl_tokens[0], ours_tokens), with_ours,
                      kernels)


def dpo_report(args, info: dict, trl_version: str, times: dict[str, list[float]],
               tokens: tuple[int, int], with_ours: bool, kernels: float | None) -> dict:
    """Print the DPO table and the README row; the result ``trl_dpo.json`` holds."""
    import transformers

    trl_tokens, ours_tokens = tokens
    rows = [{"name": name, "runs": t, "s": _common.median(t)} for name, t in times.items()]
    for row in rows:
        row["pps"] = args.pairs / row["s"]
        row["ratio"] = row["pps"] / rows[0]["pps"]
    print(f"\nDPO throughput, {args.pairs} pairs, batch {DPO_BATCH}, one epoch "
          f"({-(-args.pairs // DPO_BATCH)} optimiser steps), beta {DPO_BETA}, sigmoid loss; "
          f"tokens (prompt + response, both sides of every pair): TRL {trl_tokens}, ours "
          f"{ours_tokens}; median of {args.repeats} whole runs after a warm-up, alternating")
    print(_common.machine_line(info))
    print(f"transformers {transformers.__version__}, trl {trl_version}, fp32, no gradient "
          "checkpointing; set-up (trainer, dataset tokenisation) not timed")
    print(_common.format_table(rows, [("name", "trainer", "s"), ("s", "s/run", ".3f"),
                                      ("pps", "pairs/s", ".1f"), ("ratio", "vs TRL", ".2f")]))
    result = {"machine": info, "transformers": transformers.__version__, "trl": trl_version,
              "pairs": args.pairs, "batch": DPO_BATCH, "beta": DPO_BETA, "epochs": 1,
              "trl_tokens": trl_tokens, "ours_tokens": ours_tokens,
              "rows": [{k: r[k] for k in ("name", "runs", "s", "pps", "ratio")} for r in rows]}
    if with_ours:
        ratio, ceiling = rows[1]["ratio"], rows[0]["s"] / kernels
        result.update(ratio=ratio, target=TARGET, target_met=ratio >= TARGET,
                      ours_kernel_s=kernels, ceiling=ceiling)
        print(f"target: ours >= {TARGET:g}x TRL's pairs/s: "
              f"{'met' if ratio >= TARGET else 'NOT met'} ({ratio:.2f}x)")
        print(f"ceiling: our run spends {kernels:.3f} s in the model's kernels (profiled): "
              f"with nothing else, {ceiling:.2f}x TRL")
        print("README row:\n"
              f"| DPO vs TRL {trl_version} `DPOTrainer` ({args.pairs} pairs, batch {DPO_BATCH}, "
              f"one epoch, β {DPO_BETA}{_common.load_note(info)}) | **{ratio:.2f}× TRL's "
              f"throughput**; {ceiling:.2f}× if our run were nothing but its model kernels; "
              f"target {TARGET:g}× |")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", nargs="+", choices=("grpo", "dpo"), default=["grpo", "dpo"])
    parser.add_argument("--steps", type=int, default=6, help="timed GRPO batches of each")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first GRPO batches")
    parser.add_argument("--repeats", type=int, default=5, help="timed DPO runs of each")
    parser.add_argument("--pairs", type=int, default=512, help="preference pairs per DPO run")
    parser.add_argument("--trl-only", action="store_true",
                        help="time TRL alone (the package's side is not measured)")
    args = parser.parse_args()
    trl_version = check_trl()
    info = _common.setup()
    quiet_trl()
    for method in args.method:
        bench = bench_grpo if method == "grpo" else bench_dpo
        result = bench(args, info, trl_version, with_ours=not args.trl_only)
        print(f"wrote {_common.write_json(f'trl_{method}.json', result)}")


if __name__ == "__main__":
    main()
