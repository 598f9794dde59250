"""One RLHF step on CPU and on a GPU: step time, and GPU memory against the memory calculator.

    python benchmarks/bench_devices.py [--sizes toy,medium] [--steps 5] [--cpu-steps 2]

For each model size the four models are built at that shape with random weights (the vocabulary
stays the task's 64 tokens) and ``RLHFTrainer`` runs batch 64, 4 prompt tokens + 20 response
tokens (no early stop, so every step has the same shape), 4 PPO epochs x 2 minibatches, critic
"separate", on:

* the CPU (fp32, one thread: the course's setting) for ``--cpu-steps`` steps;
* CUDA, if there is a GPU, with the default precision (bf16 autocast, fp32 master weights,
  bf16 frozen reward model and reference) for ``--steps`` steps after a warm-up step.

On the GPU it reads ``torch.cuda.max_memory_allocated`` over the timed steps (the peak) and
``torch.cuda.memory_allocated`` after them (what stays resident between steps: weights,
gradients and Adam states), and sets them next to ``rlhf_edu.memory.memory_breakdown`` for the
same shapes: its model states (weights + gradients + optimizer + master weights) against the
resident bytes, and its total (an upper bound: it adds the KV cache, logits and activations as if
all were resident at once) against the peak. Sizes: "toy" (the course's 3 x 128, 0.6 M
parameters), "medium" (12 x 768, GPT-2 small's body, 85 M), "large" (24 x 1024, 302 M).
Writes ``results/devices.json``. Without a GPU it still times the CPU and prints the prediction.
"""

from __future__ import annotations

import argparse
import time

import _common
import torch

from rlhf_edu.memory import GB, ModelSpec, memory_breakdown
from rlhf_edu.model import GPT, GPTConfig
from rlhf_edu.models import RewardModel, build_models
from rlhf_edu.trainer import PPOConfig, RLHFTrainer

SIZES = {"toy": (3, 4, 128), "medium": (12, 12, 768), "large": (24, 16, 1024)}
PROMPT, RESPONSE = 4, 20  # <bos> + the longest prompt (3 words); response tokens
STATES = ("weights", "gradients", "optimizer_states", "master_weights")


def make_trainer(size: str, device: str, batch: int, seed: int = 0) -> RLHFTrainer:
    n_layer, n_head, n_embd = SIZES[size]
    cfg = GPTConfig(block_size=PROMPT + RESPONSE, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    torch.manual_seed(seed)
    models = build_models("separate", sft=GPT(cfg), reward=RewardModel(GPT(cfg)), seed=seed)
    config = PPOConfig(batch_size=batch, response_len=RESPONSE, stop_at_eos=False, seed=seed,
                       device=device)
    return RLHFTrainer(config, models)


def time_steps(trainer: RLHFTrainer, steps: int) -> list[float]:
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        trainer.step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def predict(trainer: RLHFTrainer, batch: int) -> dict:
    spec = ModelSpec.from_gpt_config(trainer.models.actor.gpt.config)
    bd = memory_breakdown(spec, batch=batch, micro_batch=batch // trainer.config.minibatches,
                          prompt_len=PROMPT, response_len=RESPONSE, precision="mixed")
    items = bd.item_totals()
    return {"model_states": sum(items[k] for k in STATES), "total": bd.per_gpu_bytes,
            "items": items}


def measure(size: str, args, has_cuda: bool) -> dict:
    row: dict = {"size": size}
    cpu = make_trainer(size, "cpu", args.batch)
    row["params"] = cpu.models.actor.gpt.num_params()
    row["prediction"] = predict(cpu, args.batch)
    if args.cpu_steps:
        row["cpu_step_s"] = _common.median(time_steps(cpu, args.cpu_steps))
    del cpu
    if has_cuda:
        torch.cuda.empty_cache()
        gpu = make_trainer(size, "cuda", args.batch)
        time_steps(gpu, 1)  # warm-up: kernels chosen, optimiser states allocated
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        row["gpu_step_s"] = _common.median(time_steps(gpu, args.steps))
        row["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
        row["gpu_resident_bytes"] = torch.cuda.memory_allocated()
        row["gpu"] = torch.cuda.get_device_name()
        del gpu
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="toy,medium",
                        help=f"comma-separated, from {', '.join(SIZES)}")
    parser.add_argument("--steps", type=int, default=5, help="timed GPU steps per size")
    parser.add_argument("--cpu-steps", type=int, default=2, help="timed CPU steps (0: skip)")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {unknown}; choose from {', '.join(SIZES)}")
    info = _common.setup()
    has_cuda = torch.cuda.is_available()
    rows = [measure(size, args, has_cuda) for size in sizes]

    print(_common.machine_line(info, "median of the timed steps after a warm-up step"))
    print(f"GPU: {rows[0].get('gpu', 'none (CUDA not available): GPU columns are empty')}")
    print(f"one RLHF step: batch {args.batch}, {PROMPT} + {RESPONSE} tokens, 4 PPO epochs x 2 "
          "minibatches; GPU in bf16 autocast with fp32 master weights, CPU in fp32\n")
    table = []
    for r in rows:
        p = r["prediction"]
        peak, resident = r.get("gpu_peak_bytes"), r.get("gpu_resident_bytes")
        table.append({
            "size": r["size"], "params": r["params"] / 1e6,
            "cpu": r.get("cpu_step_s"), "gpu": r.get("gpu_step_s"),
            "speedup": (r["cpu_step_s"] / r["gpu_step_s"]
                        if "cpu_step_s" in r and "gpu_step_s" in r else None),
            "states_pred": p["model_states"] / GB,
            "resident": resident / GB if resident is not None else None,
            "states_ratio": resident / p["model_states"] if resident is not None else None,
            "total_pred": p["total"] / GB,
            "peak": peak / GB if peak is not None else None,
            "peak_ratio": peak / p["total"] if peak is not None else None,
        })
    print(_common.format_table(table, [
        ("size", "size", "s"), ("params", "M params", ".1f"),
        ("cpu", "CPU s/step", ".3f"), ("gpu", "GPU s/step", ".3f"), ("speedup", "speed-up", ".1f"),
        ("states_pred", "predicted states GB", ".3f"), ("resident", "resident GB", ".3f"),
        ("states_ratio", "resident/pred", ".2f"), ("total_pred", "predicted total GB", ".3f"),
        ("peak", "peak GB", ".3f"), ("peak_ratio", "peak/pred", ".2f")]))
    print("\nREADME rows (Running on GPUs):")
    for r, t in zip(rows, table):
        shape = "{} × {}".format(SIZES[r["size"]][0], SIZES[r["size"]][2])
        gpu = f"{t['gpu']:.3f}" if t["gpu"] is not None else "-"
        if t["speedup"] is not None:
            gpu += f" ({t['speedup']:.0f}× faster)"
        peak = (f"{t['peak']:.3f} GB peak, {t['resident']:.3f} GB resident"
                if t["peak"] is not None else "-")
        cpu = f"{t['cpu']:.2f}" if t["cpu"] is not None else "-"
        print(f"| {r['size']} ({shape}) | {t['params']:.1f} M | {cpu} | {gpu} | {peak} | "
              f"{t['total_pred']:.3f} GB (states {t['states_pred']:.3f}) |")
    path = _common.write_json("devices.json", {"machine": info, "batch": args.batch,
                                               "prompt_len": PROMPT, "response_len": RESPONSE,
                                               "rows": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
