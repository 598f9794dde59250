"""The chapter's two scripts, run as a learner runs them: subprocesses with small budgets.

``scripts/rlhf_loop_pseudo.py`` must walk the six phases in order with the shapes of a (B, T)
batch and arithmetic that adds up; ``scripts/reward_calculator.py`` must print a total reward
that equals score - beta x sum KL recomputed from its own printed numbers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
NUM = r"-?\d+\.\d{3}"
# both scripts print numbers rounded to 3 decimals: a sum of n of them is off by n x 0.0005
ROUND = 0.0005


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(SCRIPTS / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def floats(text: str) -> list[float]:
    return [float(x) for x in re.findall(NUM, text)]


# ------------------------------------------------------------------ rlhf_loop_pseudo.py

@pytest.fixture(scope="module")
def loop() -> str:
    out = run("rlhf_loop_pseudo.py", "--seed", "0", "--batch", "4")
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_loop_walks_the_six_phases_in_order(loop):
    headings = re.findall(r"^== (\d)\. ", loop, re.MULTILINE)
    assert headings == ["1", "2", "3", "4", "5", "6"], headings
    for title in ("SAMPLE PROMPTS", "ACTOR GENERATES", "REWARD MODEL SCORES", "REFERENCE",
                  "CRITIC VALUES + GAE", "PPO UPDATE"):
        assert title in loop
    assert len(loop.splitlines()) <= 80


def test_loop_prints_the_shapes_of_a_batch(loop):
    T = int(re.search(r"response width T=(\d+)", loop).group(1))
    assert 1 <= T <= 12
    for name in ("response", "logprobs", "mask", "ref_logprobs", "kl", "rewards", "values",
                 "advantages", "returns", "ratio"):
        assert re.search(rf"^  {name} +\(4, {T}\) +(int64|float32|bool) ", loop, re.MULTILINE), \
            f"no line for {name} with shape (4, {T})"
    assert re.search(r"^  scores +\(4,\) +float32", loop, re.MULTILINE)
    assert len(re.findall(r"^  \[\d\] '.*' -> '", loop, re.MULTILINE)) == 4  # decoded texts


def test_loop_token_rows_add_up_to_the_reward(loop):
    beta = float(re.search(r"beta=([\d.]+)", loop).group(1))
    rows = re.findall(rf"^ +(\d+) (\S+) +({NUM}) +({NUM}) +({NUM}) +({NUM})$", loop,
                      re.MULTILINE)
    assert rows, "no token-by-token table"
    assert [int(r[0]) for r in rows] == list(range(len(rows)))
    score, beta_sum, kl_sum, total = map(float, re.search(
        rf"sum: ({NUM}) - ([\d.]+) x ({NUM}) = ({NUM})", loop).groups())
    assert beta_sum == beta
    for i, (_, word, logp, ref_logp, kl, reward) in enumerate(rows):
        logp, ref_logp, kl, reward = map(float, (logp, ref_logp, kl, reward))
        assert abs(kl - (logp - ref_logp)) <= 3 * ROUND  # k1, the config's estimator
        expected = -beta * kl + (score if i == len(rows) - 1 else 0.0)
        assert abs(reward - expected) <= 3 * ROUND, (word, reward, expected)
    assert abs(sum(float(r[5]) for r in rows) - total) <= (len(rows) + 1) * ROUND
    assert abs(score - beta * kl_sum - total) <= 3 * ROUND


def test_loop_losses_and_the_trainer_agree(loop):
    before = re.search(rf"policy_loss ({NUM}), value_loss ({NUM}), entropy ({NUM})", loop)
    policy, value, _ = map(float, before.groups())
    p, c1, v, c2, e, total = map(float, re.search(
        rf"= ({NUM}) \+ ([\d.]+) x ({NUM}) - ([\d.]+) x ({NUM}) = ({NUM})", loop).groups())
    assert (p, v) == (policy, value)
    assert abs(p + c1 * v - c2 * e - total) <= 3 * ROUND
    assert abs(policy) <= ROUND  # ratio 1 and whitened advantages: -mean(A) = 0
    assert re.search(r"ratio .* row 0 = \[1\.000, 1\.000", loop)
    assert "Adam steps" in loop
    assert loop.rstrip().endswith("give the same tensors and losses: yes")


def test_loop_other_batch_and_help():
    out = run("rlhf_loop_pseudo.py", "--seed", "1", "--batch", "3")  # odd: one minibatch
    assert out.returncode == 0, out.stderr
    T = int(re.search(r"response width T=(\d+)", out.stdout).group(1))
    assert f"(3, {T})" in out.stdout and "1 minibatches" in out.stdout
    assert out.stdout.rstrip().endswith(": yes")
    usage = run("rlhf_loop_pseudo.py", "--help")
    assert usage.returncode == 0 and "--seed" in usage.stdout and "--batch" in usage.stdout


# ------------------------------------------------------------------ reward_calculator.py

def parse_calculator(text: str) -> dict:
    """The table's rows and sums, and each estimator's R line, as numbers."""
    rows = [floats(line) for line in re.findall(
        rf"^ +\d+ \S+ +(?:{NUM} +){{5}}{NUM}$", text, re.MULTILINE)]
    sums = floats(re.search(rf"^  sum +((?:{NUM} +){{5}}{NUM})$", text, re.MULTILINE).group(1))
    totals = {}
    pattern = (rf"^  (k[123]): R = ({NUM}) - ([\d.]+) x \(?({NUM})\)? = ({NUM}) ([+-]) "
               rf"({NUM}) = ({NUM})$")
    for k, score, beta, kl, score2, sign, penalty, total in re.findall(pattern, text,
                                                                       re.MULTILINE):
        totals[k] = dict(score=float(score), beta=float(beta), kl=float(kl),
                         score2=float(score2), penalty=float(penalty) * (-1 if sign == "-" else 1),
                         total=float(total))
    rm = float(re.search(rf"score R_rm .* = ({NUM})$", text, re.MULTILINE).group(1))
    gold = float(re.search(rf"gold score .* = ({NUM})$", text, re.MULTILINE).group(1))
    return dict(rows=rows, sums=sums, totals=totals, rm=rm, gold=gold)


def check_calculator(text: str, beta: float) -> dict:
    """Every printed total is score - beta x sum KL, from the printed numbers."""
    c = parse_calculator(text)
    assert set(c["totals"]) == {"k1", "k2", "k3"}
    n = len(c["rows"])
    assert n >= 1
    for col in range(6):  # logp, ref_logp, k1, k2, k3, exact: the sum row sums the column
        assert abs(sum(r[col] for r in c["rows"]) - c["sums"][col]) <= (n + 1) * ROUND
    for logp, ref_logp, k1, k2, k3, exact in c["rows"]:
        assert k2 >= 0 and k3 >= 0 and exact >= 0
        assert abs(k1 - (logp - ref_logp)) <= 3 * ROUND
    for i, k in enumerate(("k1", "k2", "k3")):
        t = c["totals"][k]
        # the sums are float32: beyond the rounding, allow a relative 1e-6 for a large KL
        tol = (2 + beta) * ROUND + 1e-6 * abs(t["kl"])
        assert t["score"] == t["score2"] == c["rm"]
        assert t["beta"] == beta
        assert t["kl"] == c["sums"][2 + i]
        assert abs(t["score"] - beta * t["kl"] - t["total"]) <= tol, (k, t)
        assert abs(-beta * t["kl"] - t["penalty"]) <= tol, (k, t)
        assert abs(t["score"] + t["penalty"] - t["total"]) <= tol, (k, t)
    assert c["sums"][3] >= 0 and c["sums"][4] >= 0  # k2, k3
    assert -1 <= c["gold"] <= 1
    return c


def test_calculator_actor_equal_to_reference_has_no_penalty():
    out = run("reward_calculator.py", "the food", "was great .")
    assert out.returncode == 0, out.stderr
    c = check_calculator(out.stdout, beta=0.05)
    assert "every KL is 0" in out.stdout
    assert c["sums"][2:] == [0.0, 0.0, 0.0, 0.0]
    assert all(t["total"] == c["rm"] for t in c["totals"].values())
    assert c["gold"] == pytest.approx(1 / 3, abs=ROUND)  # one positive clause of three
    assert [r[0] == r[1] for r in c["rows"]] == [True] * 4  # was great . <eos>


def test_calculator_with_a_tempered_actor_pays_a_penalty():
    out = run("reward_calculator.py", "the food", "was great great amazing !", "--beta", "0.2",
              "--actor-temperature", "1.5")
    assert out.returncode == 0, out.stderr
    c = check_calculator(out.stdout, beta=0.2)
    assert "every KL is 0" not in out.stdout and "temperature 1.5" in out.stdout
    assert c["sums"][3] > 0 and c["sums"][4] > 0 and c["sums"][5] > 0
    assert c["gold"] == -1.0  # a repeated word: the hack the reward model misses
    assert len(c["rows"]) == 6  # five words and <eos>


def test_calculator_reads_an_actor_checkpoint(tmp_path):
    from rlhf_edu import load_pretrained
    from rlhf_edu.checkpoint import atomic_save, model_checkpoint

    sft = load_pretrained("sft")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sft.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    path = tmp_path / "moved.pt"
    atomic_save(model_checkpoint("sft", sft.config, sft.state_dict()), path)
    out = run("reward_calculator.py", "i loved the", "wine .", "--actor", str(path))
    assert out.returncode == 0, out.stderr
    assert str(path) in out.stdout and "every KL is 0" not in out.stdout
    c = check_calculator(out.stdout, beta=0.05)
    assert c["sums"][3] > 0 and c["sums"][4] > 0


def test_calculator_unknown_word_is_one_line_and_exit_2():
    out = run("reward_calculator.py", "the food", "was grate .")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "'grate'" in lines[0] and "unknown word" in lines[0], out.stderr
    assert out.stdout == ""


def test_calculator_help():
    out = run("reward_calculator.py", "--help")
    assert out.returncode == 0
    for flag in ("PROMPT", "RESPONSE", "--beta", "--actor", "--actor-temperature"):
        assert flag in out.stdout
    assert "delicious" in out.stdout  # the epilog lists the task's words
