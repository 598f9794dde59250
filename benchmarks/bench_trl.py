"""RLHF throughput: TRL's PPO trainer against ours, on the same toy model shape, on CPU.

    python benchmarks/bench_trl.py [--steps 8] [--warmup 2]

TRL 0.29.1 is the last release with a PPO trainer (``trl.experimental.ppo``; TRL 1.x has none).
Both sides run PPO with the same work per step:

* the toy GPT-2 shape of the shipped models (3 layers, 4 heads, width 128, vocabulary 64,
  context 48): TRL gets ``GPT2LMHeadModel`` policy and reference and
  ``GPT2ForSequenceClassification(num_labels=1)`` value and reward models built from that
  configuration (random weights, no hub); ours runs ``RLHFTrainer`` on the shipped models;
* 64 prompts of the review task per step, exactly 16 sampled tokens each (no stop token on
  either side), temperature 1, 4 PPO epochs x 2 minibatches of 32, k1 KL with coefficient 0.05,
  fp32, no gradient checkpointing (TRL's PPOConfig defaults to it and to bf16; both are turned
  off so the two sides do the same arithmetic).

TRL needs a tokenizer object and a dataset of tokenized prompts: a word-level
``PreTrainedTokenizerFast`` is built in memory from ``rlhf_edu.task.VOCAB``.

How it is timed: ``PPOTrainer.train()`` runs ``warmup + steps`` PPO steps; a callback at the end
of each TRL step runs one step of ours and times it, so the two alternate step by step and share
the machine's load. A TRL step is the time from the end of our previous step to the end of the
TRL step (so it includes TRL's per-step ``gc.collect()`` calls, which are part of its loop);
set-up and the first ``warmup`` steps of each are excluded.

TRL's trainer calls ``gc.collect()`` twice a step (after generation and after each step), each a
full collection over a heap that is nearly all torch / transformers / datasets imports. Each call
is timed in the same run (the ``gc`` module TRL's trainer sees is replaced by one whose
``collect`` is timed), so the row states the share of TRL's step spent in them and the ratio
TRL's step minus that time would give. Writes ``results/trl.json``.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
import warnings

import _common
import torch

from rlhf_edu.task import PROMPTS, VOCAB, Tokenizer
from rlhf_edu.trainer import PPOConfig as OurPPOConfig
from rlhf_edu.trainer import RLHFTrainer

BATCH, RESPONSE_LEN, EPOCHS, MINIBATCHES = 64, 16, 4, 2


def word_tokenizer():
    """A Hugging Face fast tokenizer over the task's words, built without the hub."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    raw = RawTokenizer(WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<pad>"))
    raw.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", padding_side="left")


def trl_models(vocab_size: int):
    """Policy, reference, value and reward models of the shipped toy GPT's shape."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    from rlhf_edu.models import load_pretrained

    c = load_pretrained("sft").config
    config = GPT2Config(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
                        vocab_size=vocab_size, n_positions=c.block_size,
                        activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                        num_labels=1)
    torch.manual_seed(0)
    return (GPT2LMHeadModel(config), GPT2LMHeadModel(config),
            GPT2ForSequenceClassification(config), GPT2ForSequenceClassification(config), c)


class TimedGC:
    """Stands in for the ``gc`` module inside TRL's PPO trainer: ``collect`` is the real one,
    timed; ``seconds`` is the running total."""

    def __init__(self) -> None:
        self.seconds, self.calls = 0.0, 0

    def collect(self, *args, **kwargs) -> int:
        start = time.perf_counter()
        found = gc.collect(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return found

    def __getattr__(self, name: str):
        return getattr(gc, name)


def run_alternating(args, info: dict) -> dict:
    """TRL's ``train()`` with one step of ours after each of its steps: the raw timings."""
    import datasets
    import transformers
    import trl
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo_module

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)  # gradient_checkpointing renamed
    datasets.disable_progress_bars()
    tok = word_tokenizer()
    ours_tok = Tokenizer()
    assert tok("<bos> the food was")["input_ids"] == ours_tok.encode("the food was", bos=True)
    total = args.warmup + args.steps
    prompts = [f"<bos> {PROMPTS[i % len(PROMPTS)]}" for i in range(BATCH * total)]
    dataset = datasets.Dataset.from_dict({"input_ids": [tok(p)["input_ids"] for p in prompts]})
    policy, ref, value, reward, shape = trl_models(len(tok) if len(tok) > 64 else 64)

    ours = RLHFTrainer(OurPPOConfig(batch_size=BATCH, response_len=RESPONSE_LEN,
                                    stop_at_eos=False, ppo_epochs=EPOCHS, minibatches=MINIBATCHES,
                                    beta=0.05, temperature=1.0, seed=0))
    ours_shape = ours.models.actor.gpt.config
    assert (ours_shape.n_layer, ours_shape.n_head, ours_shape.n_embd) == (
        shape.n_layer, shape.n_head, shape.n_embd)

    class Interleave(TrainerCallback):
        """At each TRL step end: note the time, run and time one step of ours."""

        def __init__(self):
            self.trl_ends, self.ours_ends, self.ours_steps, self.ours_phases = [], [], [], []
            self.gc_totals: list[float] = []  # TRL's gc.collect() seconds so far, at each step end
            self.start = None

        def on_train_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.trl_ends.append(time.perf_counter())
            self.gc_totals.append(timed_gc.seconds)
            metrics = ours.step()
            self.ours_ends.append(time.perf_counter())
            self.ours_steps.append(self.ours_ends[-1] - self.trl_ends[-1])
            self.ours_phases.append({k: v for k, v in metrics.items() if k.startswith("time_")})

    clock = Interleave()
    timed_gc = TimedGC()
    trl_ppo_module.gc = timed_gc  # TRL's trainer module calls gc.collect() by this name
    with tempfile.TemporaryDirectory() as out:
        config = PPOConfig(
            output_dir=out, report_to="none", save_strategy="no", logging_strategy="no",
            use_cpu=True, bf16=False, gradient_checkpointing=False, seed=0,
            per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
            num_mini_batches=MINIBATCHES, num_ppo_epochs=EPOCHS, response_length=RESPONSE_LEN,
            total_episodes=BATCH * total, temperature=1.0, kl_coef=0.05, kl_estimator="k1",
            stop_token_id=None, missing_eos_penalty=None, num_sample_generations=0,
            learning_rate=1e-4, dataloader_num_workers=0, disable_tqdm=True)
        trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref,
                             reward_model=reward, value_model=value, train_dataset=dataset,
                             callbacks=[clock])
        for cb in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(cb)
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
    assert torch.get_num_threads() == info["torch_threads"], "something changed torch's threads"
    return {"clock": clock, "gc_calls": timed_gc.calls, "wall": wall, "shape": shape,
            "versions": (transformers.__version__, trl.__version__)}


def report(args, info: dict, raw: dict) -> None:
    """Print the table and the README row, write ``results/trl.json``."""
    clock, wall, shape = raw["clock"], raw["wall"], raw["shape"]
    transformers_version, trl_version = raw["versions"]
    total = args.warmup + args.steps
    starts = [clock.start] + clock.ours_ends[:-1]
    trl_steps = [end - start for start, end in zip(starts, clock.trl_ends)]
    timed = slice(args.warmup, None)
    trl_med = _common.median(trl_steps[timed])
    ours_med = _common.median(clock.ours_steps[timed])
    # the gc.collect() seconds inside each TRL step's interval (one from the end of the
    # previous step, one after generation), and TRL's step without them
    trl_gc = [b - a for a, b in zip([0.0] + clock.gc_totals[:-1], clock.gc_totals)]
    gc_med = _common.median(trl_gc[timed])
    gc_share = _common.median([g / t for g, t in zip(trl_gc[timed], trl_steps[timed])])
    ratio_no_gc = _common.median([(t - g) / o for t, g, o in zip(
        trl_steps[timed], trl_gc[timed], clock.ours_steps[timed])])
    phases = {k: _common.median([p[k] for p in clock.ours_phases[timed]])
              for k in clock.ours_phases[0]}
    rows = [
        {"name": f"TRL {trl_version} PPOTrainer", "s": trl_med, "eps": BATCH / trl_med},
        {"name": "rlhf_edu RLHFTrainer", "s": ours_med, "eps": BATCH / ours_med},
    ]
    ratio = trl_med / ours_med
    print(f"\nPPO throughput, batch {BATCH}, {RESPONSE_LEN} new tokens, {EPOCHS} epochs x "
          f"{MINIBATCHES} minibatches; model {shape.n_layer} layers, {shape.n_head} heads, "
          f"width {shape.n_embd}, vocabulary 64; median of {args.steps} steps after "
          f"{args.warmup} warm-up steps, alternating")
    print(_common.machine_line(info))
    print(f"transformers {transformers_version}, trl {trl_version}, fp32, no gradient "
          f"checkpointing; whole TRL train() call {wall:.1f} s including both")
    print(_common.format_table(rows, [("name", "trainer", "s"), ("s", "s/step", ".3f"),
                                      ("eps", "episodes/s", ".1f")]))
    print("ours by phase (median s): " + ", ".join(
        f"{k.removeprefix('time_')} {v:.3f}" for k, v in phases.items()))
    print(f"TRL's gc.collect(): {raw['gc_calls']} calls in {total} steps, median {gc_med:.3f} s "
          f"per step = {gc_share:.0%} of its step; TRL's step without them: {ratio_no_gc:.2f}x "
          "ours (median of the per-step ratios)")
    met = ratio >= 3
    print(f"target: ours >= 3x TRL's episodes/s: {'met' if met else 'NOT met'} ({ratio:.2f}x)")
    print("README row:\n"
          f"| same work as TRL {trl_version} `PPOTrainer` (batch {BATCH}, {RESPONSE_LEN} "
          f"tokens, {EPOCHS} epochs × {MINIBATCHES} minibatches{_common.load_note(info)}) | "
          f"{ours_med:.2f} s vs "
          f"{trl_med:.2f} s per step: **{ratio:.2f}× TRL's throughput**; TRL's two "
          f"`gc.collect()` calls per step take {100 * gc_share:.0f} % of its step "
          f"({gc_med:.2f} s, timed in the same run); "
          f"without them it would be {ratio_no_gc:.2f}× |")
    path = _common.write_json("trl.json", {
        "machine": info, "transformers": transformers_version, "trl": trl_version,
        "batch": BATCH, "response_len": RESPONSE_LEN, "ppo_epochs": EPOCHS,
        "minibatches": MINIBATCHES, "warmup": args.warmup,
        "trl_step_s": trl_steps, "ours_step_s": clock.ours_steps, "ours_phases": phases,
        "trl_episodes_per_s": BATCH / trl_med, "ours_episodes_per_s": BATCH / ours_med,
        "ratio": ratio, "target_met": met, "trl_gc_collect_s": trl_gc, "trl_gc_calls":
        raw["gc_calls"], "trl_gc_share": gc_share, "ratio_without_trl_gc": ratio_no_gc})
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps of each")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps of each")
    args = parser.parse_args()
    info = _common.setup()
    report(args, info, run_alternating(args, info))


if __name__ == "__main__":
    main()
