"""Data-parallel PPO on CPU: two gloo ranks launched with torchrun."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from rlhf_edu.distributed import resolve_placement, select_device
from rlhf_edu.trainer import PPOConfig, RLHFTrainer

pytestmark = pytest.mark.distributed

CONFIG = dict(batch_size=8, response_len=10, ppo_epochs=2, minibatches=1, seed=3)
# critic-free: group advantages, k3 in the loss
GRPO = dict(CONFIG, advantage_estimator="grpo", group_size=4)

WORKER = textwrap.dedent('''
    import sys, torch
    from rlhf_edu import distributed
    from rlhf_edu.advantages import whiten
    from rlhf_edu.trainer import PPOConfig, RLHFTrainer

    out = sys.argv[1]
    rank, world = distributed.init_from_env()
    torch.manual_seed(0)  # the critic's fresh head: the same on every rank
    trainer = RLHFTrainer(PPOConfig(**{config}), run_dir=f"{{out}}/run{{rank}}")
    batch = torch.load(f"{{out}}/rollout.pt", weights_only=False)
    share = batch.tokens.size(0) // world
    mine = batch.rows(slice(rank * share, (rank + 1) * share))
    trainer.update(mine)
    x = torch.load(f"{{out}}/whiten.pt")
    w = whiten(x["x"][rank::world], x["mask"][rank::world], reduce=distributed.all_reduce_sum)
    torch.save({{"params": [p.detach() for p in trainer.policy.parameters()], "whiten": w}},
               f"{{out}}/rank{{rank}}.pt")
    trainer.train(1, progress=False)
    trainer.ddp = None
    del trainer

    grpo = RLHFTrainer(PPOConfig(**{grpo}))
    batch = torch.load(f"{{out}}/rollout-grpo.pt", weights_only=False)
    grpo.update(batch.rows(slice(rank * share, (rank + 1) * share)))
    params = [p.detach().clone() for p in grpo.models.actor.parameters()]
    metrics = grpo.step()  # a whole step: each rank samples its own groups
    torch.save({{"params": params, "metrics": sorted(metrics)}}, f"{{out}}/grpo-rank{{rank}}.pt")
    grpo.ddp = None
    del grpo
    distributed.shutdown()
''').format(config=repr(CONFIG), grpo=repr(GRPO))


def _torchrun(args, cwd):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *args]
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """One torchrun launch of two ranks for the checks below; the single-process updates
    they are compared with run here, in this process: (folder, PPO trainer, GRPO trainer,
    whitening inputs)."""
    tmp_path = tmp_path_factory.mktemp("ranks")
    torch.manual_seed(0)
    single = RLHFTrainer(PPOConfig(**CONFIG))
    batch = single.rollout()
    torch.save(batch, tmp_path / "rollout.pt")
    x = torch.randn(6, 5)
    mask = (torch.rand(6, 5) > 0.3).float()
    mask[:, 0] = 1
    torch.save({"x": x, "mask": mask}, tmp_path / "whiten.pt")
    single.update(batch)
    grpo = RLHFTrainer(PPOConfig(**GRPO))
    batch = grpo.rollout()
    torch.save(batch, tmp_path / "rollout-grpo.pt")
    grpo.update(batch)

    (tmp_path / "worker.py").write_text(WORKER)
    _torchrun([str(tmp_path / "worker.py"), str(tmp_path)], cwd=tmp_path)
    return tmp_path, single, grpo, (x, mask)


def test_two_ranks_update_like_one_process_with_the_whole_batch(ranks):
    tmp_path, single, _, (x, mask) = ranks
    from rlhf_edu.advantages import whiten
    expected = whiten(x, mask)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for p, q in zip(single.policy.parameters(), got["params"]):
            torch.testing.assert_close(q, p.detach(), atol=1e-5, rtol=1e-4)
        # whitening statistics are global: each rank's rows match the single-process result
        torch.testing.assert_close(got["whiten"], expected[rank::2], atol=1e-6, rtol=1e-5)
    # only rank 0 writes files (besides the lock's own, which filelock may remove at release)
    assert sorted(p.name for p in (tmp_path / "run0").iterdir()
                  if p.name not in (".lock", ".pid")) == [
        "checkpoint.pt", "config.json", "metrics.jsonl"]
    assert not (tmp_path / "run1").exists()


def test_two_ranks_update_grpo_like_one_process(ranks):
    tmp_path, _, single, _ = ranks
    for rank in (0, 1):
        got = torch.load(tmp_path / f"grpo-rank{rank}.pt")
        for p, q in zip(single.models.actor.parameters(), got["params"]):
            torch.testing.assert_close(q, p.detach(), atol=1e-5, rtol=1e-4)
        assert "kl_loss" in got["metrics"] and "value_loss" not in got["metrics"]


def test_cli_nproc_trains_with_two_ranks(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "rlhf_edu.cli", "train", "--nproc", "2", "--steps", "2",
         "--batch", "8", "--response-len", "8", "--ppo-epochs", "1", "--quiet",
         "--run-dir", str(run)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]  # one writer
    assert result.stdout.count("RM score") == 1  # rank 0 alone prints the table


@pytest.mark.parametrize("placement, match", [
    ({"critic": "cpu", "policy": "cpu"}, r"unknown role\(s\) \['policy'\]"),
    ({"reward": "cuda:7"}, "cuda"),
    ("everywhere", "placement must be 'colocate' or a dict"),
])
def test_bad_placement(placement, match):
    with pytest.raises(ValueError, match=match):
        resolve_placement(placement, torch.device("cpu"))


def test_explicit_placement_on_cpu_runs():
    trainer = RLHFTrainer(PPOConfig(batch_size=8, response_len=8, ppo_epochs=1,
                                    placement={"reward": "cpu", "reference": "cpu"}))
    assert set(trainer.devices.values()) == {torch.device("cpu")}
    assert torch.isfinite(torch.tensor(trainer.step()["rm_score"]))


def test_device_selection():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu9'"):
        select_device("tpu9")
