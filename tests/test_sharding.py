"""ZeRO with FSDP2 on two CPU ranks: the same update as one process, exact bytes per rank,
sharded checkpoints that resume bit for bit and load into another number of processes."""

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict

import pytest
import torch

from rlhf_edu import sharding, sharding_measure
from rlhf_edu.checkpoint import atomic_save
from rlhf_edu.cli import main
from rlhf_edu.memory import fsdp2_local_bytes
from rlhf_edu.rundir import check
from rlhf_edu.trainer import PPOConfig, RLHFTrainer

# max_grad_norm 0.5: clipping acts on every minibatch (the norms are > 1), so the sharded
# runs must compute the global norm of sharded gradients to match
CONFIG = dict(batch_size=8, response_len=10, ppo_epochs=2, minibatches=1, seed=3,
              max_grad_norm=0.5)
# the runs compared, by name: "shared" sends the value loss into the actor's sharded backbone;
# "grpo" has no critic at all (group advantages, k3 in the loss)
MODES = {"separate": dict(critic_mode="separate"), "shared": dict(critic_mode="shared"),
         "grpo": dict(advantage_estimator="grpo", group_size=4)}
# (mode, stages)
CASES = [("separate", ("none", "zero2", "zero3")), ("shared", ("zero3",)), ("grpo", ("zero3",))]
WORLD = 2

WORKER = textwrap.dedent('''
    import gc, sys, torch
    import torch.distributed.checkpoint as dcp
    from rlhf_edu import distributed, sharding, sharding_measure
    from rlhf_edu.trainer import PPOConfig, RLHFTrainer

    out = sys.argv[1]
    rank, world = distributed.init_from_env("cpu")
    CONFIG, CASES, MODES = {config}, {cases}, {modes}
    norms = []
    clip = torch.nn.utils.clip_grad_norm_
    def recording_clip(params, max_norm):
        norm = clip(params, max_norm)
        norms.append(float(sharding.whole(norm)))
        return norm
    torch.nn.utils.clip_grad_norm_ = recording_clip

    def whole_state(trainer):
        opt = [sharding.whole(v).clone() for o in sharding.optimizers(trainer)
               for st in o.state.values() for v in st.values()]  # a copy: Adam's step is live
        params = [sharding.whole(p).detach().clone() for p in trainer.policy.parameters()]
        return {{"params": params, "opt": opt}}

    def drop(trainer):
        trainer.ddp = None
        trainer.close()
        gc.collect()

    # 1. one update on this rank's half of a batch, per critic mode and stage
    for mode, stages in CASES:
        batch = torch.load(f"{{out}}/rollout-{{mode}}.pt", weights_only=False)
        share = batch.tokens.size(0) // world
        mine = batch.rows(slice(rank * share, (rank + 1) * share))
        for stage in stages:
            trainer = RLHFTrainer(PPOConfig(**CONFIG, **MODES[mode], shard=stage))
            norms.clear()
            trainer.update(mine)
            frozen = [trainer.models.reward, trainer.models.reference]
            torch.save({{**whole_state(trainer), "norms": list(norms),
                        "bytes": sharding.local_bytes(trainer.policy,
                                                      sharding.optimizers(trainer)),
                        "frozen": sum(sharding.local_bytes(m)["parameters"] for m in frozen),
                        "rows": [sharding.local(p).shape[0] if p.dim() else 1
                                 for p in trainer.policy.parameters()]}},
                       f"{{out}}/{{mode}}-{{stage}}-rank{{rank}}.pt")
            drop(trainer)

    # what rlhf_edu.sharding_measure.measure_ranks runs on each rank, for one stage
    measured = sharding_measure._measure_stage("zero3")
    torch.save(measured, f"{{out}}/measured-rank{{rank}}.pt")

    # 2. a zero3 run: save after step 1, step 2 uninterrupted; then resume and step 2 again
    cfg = PPOConfig(**CONFIG, critic_mode="separate", shard="zero3")
    a = RLHFTrainer(cfg, run_dir=f"{{out}}/run")
    a.train(1, progress=False)
    saved = whole_state(a)
    a.step()
    uninterrupted = whole_state(a)
    drop(a)
    b = RLHFTrainer(cfg, run_dir=f"{{out}}/run", resume=True)
    loaded = whole_state(b)
    b.step()
    resumed = whole_state(b)

    # 3. a save cut short (the disk fills while the shards are written) changes nothing
    def failing_save(state_dict, checkpoint_id, **kwargs):
        (checkpoint_id / f"__{{rank}}_0.distcp").write_bytes(b"half")
        raise OSError("No space left on device")
    dcp.save, real_save = failing_save, dcp.save
    try:
        b.save()
        failed = False
    except OSError:
        failed = True
    dcp.save = real_save
    if rank == 0:
        torch.save({{"saved": saved, "loaded": loaded, "uninterrupted": uninterrupted,
                    "resumed": resumed, "failed": failed, "step": b.step_count}},
                   f"{{out}}/resume.pt")
    drop(b)
    del a, b, trainer
    distributed.shutdown()
''').format(config=repr(CONFIG), cases=repr(CASES), modes=repr(MODES))


def _torchrun(nproc, args, cwd):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *args]
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _chunk_bytes(shape, rank, world=WORLD):
    """Bytes (fp32) of ``rank``'s piece of a tensor of ``shape``, cut as ``torch.chunk`` cuts
    dimension 0 (an independent reading of FSDP2's rule: the chunks themselves)."""
    if not shape:
        return 4
    pieces = torch.chunk(torch.empty(shape, dtype=torch.float32), world, dim=0)
    return pieces[rank].numel() * 4 if rank < len(pieces) else 0


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """One torchrun launch of two ranks for every check below; the single-process reference
    runs (one per critic mode) here, in this process."""
    out = tmp_path_factory.mktemp("sharding")
    single = {}
    for mode, _ in CASES:
        torch.manual_seed(0)
        trainer = RLHFTrainer(PPOConfig(**CONFIG, **MODES[mode]))
        batch = trainer.rollout()
        torch.save(batch, out / f"rollout-{mode}.pt")
        norms = []
        clip = torch.nn.utils.clip_grad_norm_

        def recording_clip(params, max_norm, norms=norms, clip=clip):
            norm = clip(params, max_norm)
            norms.append(float(norm))
            return norm

        torch.nn.utils.clip_grad_norm_ = recording_clip
        try:
            trainer.update(batch)
        finally:
            torch.nn.utils.clip_grad_norm_ = clip
        single[mode] = {"params": [p.detach().clone() for p in trainer.policy.parameters()],
                        "shapes": [tuple(p.shape) for p in trainer.policy.parameters()],
                        "frozen_shapes": [tuple(p.shape) for m in (trainer.models.reward,
                                                                   trainer.models.reference)
                                          for p in m.parameters()],
                        "norms": norms}
    (out / "worker.py").write_text(WORKER)
    _torchrun(WORLD, [str(out / "worker.py"), str(out)], cwd=out)
    return out, single


@pytest.mark.distributed
@pytest.mark.parametrize("mode, stage", [(m, s) for m, stages in CASES for s in stages])
def test_sharded_update_equals_one_process(ranks, mode, stage):
    out, single = ranks
    want = single[mode]
    assert max(want["norms"]) > CONFIG["max_grad_norm"]  # clipping did act
    for rank in range(WORLD):
        got = torch.load(out / f"{mode}-{stage}-rank{rank}.pt")
        # the global gradient norm, from shards, before each clip
        assert got["norms"] == pytest.approx(want["norms"], rel=1e-5)
        assert len(got["params"]) == len(want["params"])
        for i, (q, p) in enumerate(zip(got["params"], want["params"])):
            torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-5,
                                       msg=lambda m, i=i: f"parameter {i}: {m}")


@pytest.mark.distributed
def test_sharded_update_equals_ddp(ranks):
    out, _ = ranks
    ddp = torch.load(out / "separate-none-rank0.pt")["params"]
    for stage in ("zero2", "zero3"):
        got = torch.load(out / f"separate-{stage}-rank0.pt")["params"]
        for q, p in zip(got, ddp):
            torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-5)


@pytest.mark.distributed
@pytest.mark.parametrize("mode, stage", [(m, s) for m, stages in CASES for s in stages])
def test_local_bytes_are_torch_chunk_shards(ranks, mode, stage):
    out, single = ranks
    shapes = single[mode]["shapes"]
    sharded = stage != "none"
    rows = []
    for rank in range(WORLD):
        got = torch.load(out / f"{mode}-{stage}-rank{rank}.pt")
        piece = sum(_chunk_bytes(s, rank) if sharded else _chunk_bytes(s, 0, world=1)
                    for s in shapes)
        # fp32 shards of every parameter, a gradient for each, Adam's two moments per element
        # and one fp32 step counter per tensor
        assert got["bytes"] == {"parameters": piece, "gradients": piece,
                                "optimizer": 2 * piece, "step_counters": 4 * len(shapes)}
        # the memory calculator's exact FSDP2 accounting agrees, rank by rank
        calc = fsdp2_local_bytes(shapes, WORLD if sharded else 1, rank if sharded else 0)
        assert (calc["weights"], calc["gradients"], calc["optimizer_states"]) == (
            got["bytes"]["parameters"], got["bytes"]["gradients"], got["bytes"]["optimizer"])
        frozen = sum(_chunk_bytes(s, rank) if stage == "zero3" else _chunk_bytes(s, 0, world=1)
                     for s in single[mode]["frozen_shapes"])
        assert got["frozen"] == frozen
        rows.append(got["rows"])
    if sharded:  # uneven shards are covered: the (1, C) value head is one row on rank 0 only
        if mode != "grpo":  # (a critic-free run has no value head)
            head = shapes.index((1, 128))
            assert [r[head] for r in rows] == [1, 0]
        assert all(a + b == s[0] for a, b, s in zip(*rows, shapes))


@pytest.mark.distributed
def test_measured_rows_equal_the_calculator(ranks):
    out, _ = ranks
    rows = [torch.load(out / f"measured-rank{rank}.pt") for rank in range(WORLD)]
    keys = ("parameters", "gradients", "optimizer", "frozen", "held_after_forward")
    for row in rows:
        want = sharding_measure._prediction(row, WORLD)
        assert {k: row[k] for k in keys} == want
        assert row["held_after_forward"] == 0  # zero3 frees every block after its forward
    table = sharding_measure.format_ranks(
        [{**r, "predicted": sharding_measure._prediction(r, WORLD)} for r in rows])
    assert table.count("  yes") == WORLD and "zero3" in table


@pytest.mark.distributed
def test_sharded_checkpoint_resumes_bit_for_bit(ranks):
    out, _ = ranks
    r = torch.load(out / "resume.pt")
    for key in ("params", "opt"):
        assert len(r["resumed"][key]) == len(r["uninterrupted"][key]) > 0
        for x, y in zip(r["loaded"][key], r["saved"][key]):
            assert torch.equal(x, y)
        for x, y in zip(r["resumed"][key], r["uninterrupted"][key]):
            assert torch.equal(x, y)


@pytest.mark.distributed
def test_a_save_cut_short_leaves_the_last_checkpoint(ranks):
    out, _ = ranks
    r = torch.load(out / "resume.pt")
    assert r["failed"] and r["step"] == 2
    run = out / "run"
    pointer = torch.load(run / "checkpoint.pt", weights_only=True)
    assert pointer["step"] == 1 and pointer["shard"] == "zero3"
    leftovers = [d.name for d in run.iterdir() if d.name.startswith(".shards-")]
    assert leftovers and all((run / d / "__0_0.distcp").read_bytes() == b"half"
                             for d in leftovers)
    assert (run / pointer["shards"] / ".metadata").is_file()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]


@pytest.mark.distributed
def test_two_rank_checkpoint_loads_into_one_process_and_continues(ranks):
    out, _ = ranks
    saved = torch.load(out / "resume.pt")["saved"]
    trainer = RLHFTrainer(PPOConfig(**CONFIG, critic_mode="separate"))
    trainer.load(out / "run" / "checkpoint.pt")
    for p, q in zip(trainer.policy.parameters(), saved["params"]):
        assert torch.equal(p.detach(), q)
    opt = [v for o in (trainer.actor_opt, trainer.critic_opt) for st in o.state.values()
           for v in st.values()]
    assert len(opt) == len(saved["opt"]) and all(torch.equal(x, y)
                                                 for x, y in zip(opt, saved["opt"]))
    assert trainer.step_count == 1
    metrics = trainer.step()
    assert trainer.step_count == 2 and torch.isfinite(torch.tensor(metrics["rm_score"]))


def test_replicated_checkpoint_does_not_load_into_shards_and_configs_must_match(tmp_path):
    state = {"kind": "rlhf-run", "world_size": 2, "config": asdict(PPOConfig())}

    class Trainer:  # what load_checkpoint reads of a trainer
        config = PPOConfig(shard="zero3")
    with pytest.raises(ValueError, match="whole .replicated. weights written without --shard"):
        sharding.load_checkpoint(Trainer(), state, tmp_path / "checkpoint.pt")
    state = {**state, "shards": "shards-x", "config": asdict(PPOConfig(seed=1, shard="zero3"))}
    with pytest.raises(ValueError, match="different config"):
        sharding.load_checkpoint(Trainer(), state, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="missing or unfinished"):
        sharding.load_checkpoint(Trainer(), {**state, "config": asdict(Trainer.config)},
                                 tmp_path / "checkpoint.pt")


@pytest.mark.parametrize("saved, asked, match", [
    ("zero3", "none", "trained with --shard zero3; resume it with --shard zero3"),
    ("none", "zero2", "trained without --shard; resume it without --shard"),
])
def test_resume_must_keep_the_stage(tmp_path, saved, asked, match):
    atomic_save({"kind": "rlhf-run", "step": 1, "config": asdict(PPOConfig(shard=saved))},
                tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=match):
        check(tmp_path, asdict(PPOConfig(shard=asked)), resume=True)


@pytest.mark.parametrize("argv, match", [
    (["--shard", "zero3"], "--shard zero3 splits the models over processes, but this run has 1"),
    (["--shard", "zero2", "--nproc", "2", "--placement", '{"reward": "cpu"}'],
     "shard 'zero2' with placement"),
    (["--shard", "zero4"], "invalid choice: 'zero4'"),
])
def test_bad_shard_arguments_fail_before_any_rank_starts(tmp_path, capsys, argv, match):
    try:
        code = main(["train", "--run-dir", str(tmp_path / "r"), *argv])
    except SystemExit as e:  # argparse refuses the choice itself
        code = e.code
    assert code == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_unknown_stage_in_the_config():
    with pytest.raises(ValueError, match="unknown shard stage 'zero1'; expected one of none"):
        PPOConfig(shard="zero1")
    with pytest.raises(ValueError, match="splits the models over processes"):
        sharding.check_world("zero3", 1)


def test_local_bytes_of_a_replicated_module():
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 1))
    opt = torch.optim.Adam(model.parameters())
    assert sharding.local_bytes(model, opt) == {"parameters": 4 * 26, "gradients": 0,
                                                "optimizer": 0, "step_counters": 0}
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    assert sharding.local_bytes(model, opt) == {"parameters": 4 * 26, "gradients": 4 * 26,
                                                "optimizer": 2 * 4 * 26, "step_counters": 4 * 4}


RESHARD_WORKER = textwrap.dedent('''
    import sys, torch
    from rlhf_edu import distributed, sharding
    from rlhf_edu.trainer import PPOConfig, RLHFTrainer

    run = sys.argv[1]
    rank, world = distributed.init_from_env("cpu")
    trainer = RLHFTrainer(PPOConfig(**{config}, critic_mode="separate", shard="zero3"),
                          run_dir=run, resume=True)
    params = [sharding.whole(p).detach().clone() for p in trainer.policy.parameters()]
    step = trainer.step_count
    trainer.step()
    if rank == 0:
        torch.save({{"params": params, "step": step, "after": trainer.step_count}},
                   f"{{run}}/../resharded.pt")
    trainer.close()
    del trainer
    distributed.shutdown()
''').format(config=repr(CONFIG))


@pytest.mark.distributed
@pytest.mark.slow
def test_two_rank_checkpoint_resumes_on_four_ranks(ranks, tmp_path):
    import shutil

    out, _ = ranks
    run = tmp_path / "run"
    shutil.copytree(out / "run", run)
    (tmp_path / "worker.py").write_text(RESHARD_WORKER)
    _torchrun(4, [str(tmp_path / "worker.py"), str(run)], cwd=tmp_path)
    got = torch.load(tmp_path / "resharded.pt")
    saved = torch.load(out / "resume.pt")["saved"]["params"]
    assert got["step"] == 1 and got["after"] == 2
    assert len(got["params"]) == len(saved)
    assert all(torch.equal(p, q) for p, q in zip(got["params"], saved))


def test_per_layer_gathering_needs_equal_generation_lengths():
    sharded = sharding.Sharded("zero3", roots={}, gather="layer")
    with pytest.raises(ValueError, match="every rank must generate equally many: use it with "
                                         "stop_at_eos=False"):
        with sharded.gathered(equal_forwards=False):
            pass
    sharded.gather = "token"
    with pytest.raises(ValueError, match="Sharded.gather must be 'rollout' or 'layer'"):
        with sharded.gathered(equal_forwards=True):
            pass


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), None])
@pytest.mark.parametrize("where", [0, 4097, -1])
def test_all_finite_finds_any_nan_or_inf_in_any_tensor(bad, where):
    """all_finite (a min and a max per tensor) agrees with checking every element, for NaN,
    +inf and -inf at the start, the middle and the end of the last of several tensors (an
    empty one among them); ``None`` plants nothing."""
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(128, 512, generator=g) * 1e30, torch.empty(0),
               torch.randn(64, generator=g).to(torch.bfloat16), torch.randn(8192, generator=g)]
    if bad is not None:
        tensors[-1][where] = bad
    want = all(bool(torch.isfinite(t).all()) for t in tensors)
    got = sharding.all_finite(tensors)
    assert got.dtype == torch.bool and got.shape == ()
    assert bool(got) == want == (bad is None)
