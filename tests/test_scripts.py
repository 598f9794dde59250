"""The chapter's two scripts, run as a learner runs them, with small budgets: each script's
first run and its error exits in a subprocess; its other runs call the script's ``main(argv)``
in this process (the same code, without starting Python and torch again).

``scripts/rlhf_loop_pseudo.py`` must walk the six phases in order with the shapes of a (B, T)
batch and arithmetic that adds up; ``scripts/reward_calculator.py`` must print a total reward
that equals score - beta x sum KL recomputed from its own printed numbers. Both say why the KL
is what it is; bad input is one line of stderr (exit 2), Ctrl-C one line (exit 130).
``scripts/make_hacked_actor.py`` rebuilds the shipped beta = 0 actor, whose samples hack the
reward model.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
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


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPTS / script), *args], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=120)


def run_here(capsys, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """What :func:`run` returns, from ``scripts/<script>.py``'s ``main(args)`` in this process."""
    capsys.readouterr()
    code = script_module(script.removesuffix(".py")).main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess([script, *args], code, captured.out, captured.err)


def script_module(name: str):
    """``scripts/<name>.py`` imported as a module (its ``main(argv)`` runs in this process)."""
    if f"script_{name}" not in sys.modules:  # dataclasses look their module up there
        spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules[f"script_{name}"]


def one_line_error(stderr: str, *needles: str) -> str:
    """The single line of ``stderr``, which must contain each of ``needles``."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


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


def test_loop_first_run_says_why_kl_is_zero(loop):
    sums = re.search(rf"k1 summed per response = \[((?:{NUM}, )*{NUM})\]", loop).group(1)
    assert floats(sums) == [0.0] * 4
    assert "why KL = 0: on the first step the actor IS the reference" in loop
    assert "--actor hacked" in loop and "--warmup N" in loop  # the next runs to try


def test_loop_with_the_hacked_actor_pays_a_large_kl(capsys):
    out = run_here(capsys, "rlhf_loop_pseudo.py", "--actor", "hacked")
    assert out.returncode == 0, out.stderr
    assert "actor: the hacked actor" in out.stdout and "why KL is large" in out.stdout
    sums = floats(re.search(rf"k1 summed per response = \[((?:{NUM}, )*{NUM})\]",
                            out.stdout).group(1))
    assert min(sums) > 10, sums  # SFT samples: 0; the hacked actor's: tens of nats
    assert out.stdout.rstrip().endswith(": yes")


def test_loop_warmup_shows_progress_and_explains_its_kl(capsys):
    out = run_here(capsys, "rlhf_loop_pseudo.py", "--warmup", "3", "--seed", "2", "--batch", "2")
    assert out.returncode == 0, out.stderr
    assert "warm-up" in out.stderr and "3/3" in out.stderr  # the progress bar
    assert "(step 4: 3 trained before it)" in out.stdout and "why KL > 0" in out.stdout
    sums = floats(re.search(rf"k1 summed per response = \[((?:{NUM}, )*{NUM})\]",
                            out.stdout).group(1))
    # one response's k1 sum may be negative; if one is, a line says why (training is chaotic
    # across machines, so which one is not asserted)
    assert ("why a k1 sum is negative" in out.stdout) == any(v < 0 for v in sums), out.stdout


def test_loop_other_batch_and_help(capsys):
    # an odd batch: one minibatch
    out = run_here(capsys, "rlhf_loop_pseudo.py", "--seed", "1", "--batch", "3")
    assert out.returncode == 0, out.stderr
    T = int(re.search(r"response width T=(\d+)", out.stdout).group(1))
    assert f"(3, {T})" in out.stdout and "1 minibatches" in out.stdout
    assert out.stdout.rstrip().endswith(": yes")
    with pytest.raises(SystemExit) as exit_:
        script_module("rlhf_loop_pseudo").main(["--help"])
    usage = capsys.readouterr().out
    assert exit_.value.code == 0 and "--seed" in usage and "--batch" in usage
    assert "--warmup" in usage and "--actor" in usage and "hacked" in usage


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
    assert "why KL = 0: the actor IS the reference" in out.stdout
    assert "--actor hacked" in out.stdout  # the first run suggests the instructive one
    assert "k1 sum is negative" not in out.stdout
    assert c["sums"][2:] == [0.0, 0.0, 0.0, 0.0]
    assert all(t["total"] == c["rm"] for t in c["totals"].values())
    assert c["gold"] == pytest.approx(1 / 3, abs=ROUND)  # one positive clause of three
    assert [r[0] == r[1] for r in c["rows"]] == [True] * 4  # was great . <eos>


def test_calculator_with_a_tempered_actor_pays_a_penalty(capsys):
    out = run_here(capsys, "reward_calculator.py", "the food", "was great great amazing !",
                   "--beta", "0.2", "--actor-temperature", "1.5")
    assert out.returncode == 0, out.stderr
    c = check_calculator(out.stdout, beta=0.2)
    assert "why KL = 0" not in out.stdout and "temperature 1.5" in out.stdout
    assert "why KL > 0" in out.stdout
    assert c["sums"][3] > 0 and c["sums"][4] > 0 and c["sums"][5] > 0
    assert c["gold"] == -1.0  # a repeated word: the hack the reward model misses
    assert len(c["rows"]) == 6  # five words and <eos>


def test_calculator_reads_an_actor_checkpoint(tmp_path, capsys):
    from rlhf_edu import load_pretrained
    from rlhf_edu.checkpoint import atomic_save, model_checkpoint

    sft = load_pretrained("sft")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sft.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    path = tmp_path / "moved.pt"
    atomic_save(model_checkpoint("sft", sft.config, sft.state_dict()), path)
    out = run_here(capsys, "reward_calculator.py", "i loved the", "wine .", "--actor", str(path))
    assert out.returncode == 0, out.stderr
    assert str(path) in out.stdout and "why KL = 0" not in out.stdout
    c = check_calculator(out.stdout, beta=0.05)
    assert c["sums"][3] > 0 and c["sums"][4] > 0


def test_calculator_unknown_word_is_one_line_and_exit_2(capsys):
    assert script_module("reward_calculator").main(["the food", "was grate ."]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    one_line_error(captured.err, "'grate'", "unknown word")


def test_calculator_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        script_module("reward_calculator").main(["--help"])
    usage = capsys.readouterr().out
    assert exit_.value.code == 0
    for flag in ("PROMPT", "RESPONSE", "--beta", "--actor", "--actor-temperature", "hacked"):
        assert flag in usage
    assert "delicious" in usage  # the epilog lists the task's words


def test_calculator_with_the_hacked_actor_pays_a_large_kl(capsys):
    # a response the hacked actor wrote itself (seed 0): the reward model loves it, the judge
    # does not, and against the reference it costs tens of nats
    response = "excellent delicious delicious delicious excellent delicious great ."
    out = run_here(capsys, "reward_calculator.py", "the food", response, "--actor", "hacked")
    assert out.returncode == 0, out.stderr
    c = check_calculator(out.stdout, beta=0.05)
    assert "actor:     the hacked actor" in out.stdout and "why KL is large" in out.stdout
    assert c["rm"] > 1.0 and c["gold"] == -1.0  # the hack: a high RM score, the worst gold
    assert c["sums"][2] > 20 and c["sums"][4] > 20 and c["sums"][5] > 20  # k1, k3, exact
    assert c["totals"]["k1"]["total"] < 0 < c["rm"]  # beta = 0.05 turns the reward negative
    assert "k1 sum is negative" not in out.stdout


def test_calculator_explains_a_negative_k1_sum(capsys):
    # a plain review the hacked actor no longer writes: the reference finds it likelier
    out = run_here(capsys, "reward_calculator.py", "the food", "was great .", "--actor", "hacked")
    assert out.returncode == 0, out.stderr
    c = check_calculator(out.stdout, beta=0.05)
    assert c["sums"][2] < 0 < c["sums"][4]  # k1 < 0, k3 > 0
    assert f"why the k1 sum is negative ({c['sums'][2]:.3f})" in out.stdout
    assert "only on average over responses sampled" in out.stdout


def sharded_run_checkpoint(tmp_path: Path) -> Path:
    """A run directory as `rlhf-edu train --shard zero3` leaves it: checkpoint.pt names a DCP
    directory holding the actor and critic (written here by one process, with a moved actor)."""
    from rlhf_edu import PPOConfig, RLHFTrainer, sharding
    from rlhf_edu.checkpoint import atomic_save, safe_load

    trainer = RLHFTrainer(PPOConfig(batch_size=2, response_len=4, minibatches=1, ppo_epochs=1))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainer.models.actor.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    path = tmp_path / "checkpoint.pt"
    with pytest.warns(UserWarning, match="single process"):
        sharding.save_checkpoint(trainer, path)
    ckpt = safe_load(path)
    atomic_save({**ckpt, "shard": "zero3"}, path)
    return path


def test_calculator_reads_the_actor_of_a_sharded_run(tmp_path, capsys):
    path = sharded_run_checkpoint(tmp_path)
    out = run_here(capsys, "reward_calculator.py", "the food", "was great .", "--actor",
                   str(path))
    assert out.returncode == 0, out.stderr
    assert "zero3 shards in" in out.stdout and "why KL > 0" in out.stdout
    c = check_calculator(out.stdout, beta=0.05)
    assert c["sums"][4] > 0 and c["sums"][5] > 0
    for shards in tmp_path.glob("shards-*"):  # the shards gone: one line naming the directory
        shards.rename(tmp_path / "moved")
    assert script_module("reward_calculator").main(["the food", "was great .", "--actor",
                                                     str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    one_line_error(captured.err, "sharded (zero3)", "shards-", "cannot be read")


# ------------------------------------------------------------------ bad input, Ctrl-C

@pytest.mark.parametrize("script, args, needles", [
    ("rlhf_loop_pseudo", ["--seed", "abc"], ["--seed", "'abc'"]),
    ("rlhf_loop_pseudo", ["--seed", str(2**63)], ["--seed", str(2**63)]),
    ("rlhf_loop_pseudo", ["--seed", "-1"], ["--seed", "[0, 2**63 - 1]"]),
    ("rlhf_loop_pseudo", ["--batch", "0"], ["--batch", "[1, 256]"]),
    ("rlhf_loop_pseudo", ["--batch", "1e3"], ["--batch", "'1e3'"]),
    ("rlhf_loop_pseudo", ["--warmup", "1000000"], ["--warmup", "[0, 1000]", "rlhf-edu train"]),
    ("reward_calculator", ["x", "y", "--beta", "1e308"], ["--beta", "[0, 1000]"]),
    ("reward_calculator", ["x", "y", "--beta", "nan"], ["--beta"]),
    ("reward_calculator", ["x", "y", "--beta", "abc"], ["--beta", "'abc'"]),
    ("reward_calculator", ["x", "y", "--actor-temperature", "1e-45"],
     ["--actor-temperature", "[0.05, 20]"]),
    ("reward_calculator", ["x", "y", "--actor-temperature", "inf"], ["--actor-temperature"]),
    ("make_hacked_actor", ["--steps", "0"], ["--steps"]),
    ("make_hacked_actor", ["--batch", "5"], ["--batch", "even"]),
])
def test_bad_numbers_are_one_line_naming_the_flag(script, args, needles, capsys):
    with pytest.raises(SystemExit) as exit_:
        script_module(script).main(args)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    one_line_error(captured.err, "error: argument", *needles)


def test_bad_numbers_in_a_real_process():  # the cases above, as a learner meets them
    out = run("reward_calculator.py", "the food", "was great .", "--beta", "1e308")
    assert out.returncode == 2 and out.stdout == ""
    one_line_error(out.stderr, "reward_calculator.py: error: argument --beta", "1e308")


@pytest.mark.parametrize("script, args, needles", [
    ("rlhf_loop_pseudo", ["--actor", "nothere.pt"], ["--actor nothere.pt", "no such file"]),
    ("reward_calculator", ["the food", "was great .", "--actor", "nothere.pt"],
     ["--actor nothere.pt", "no such file"]),
    # a temperature inside the bounds can still overflow k3 = e^-d - 1 + d: the message says
    # which token and which input
    ("reward_calculator", ["the food", "was great great terrible .", "--actor-temperature",
                           "0.05"], ["k3 of token", "overflows", "--actor-temperature 0.05"]),
])
def test_bad_inputs_after_parsing_are_one_line(script, args, needles, capsys):
    assert script_module(script).main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    one_line_error(captured.err, "error:", *needles)


def test_loop_ctrl_c_during_the_warmup_is_one_line_and_exit_130():
    # started with SIGINT ignored, as a background job of a non-interactive shell is (CI's
    # `... &`): the script must still stop on Ctrl-C
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / "rlhf_loop_pseudo.py"), "--warmup",
                             "1000"], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        first = ""
        while "warm-up" not in first and len(first) < 100:  # the bar, before the first step
            first += proc.stderr.read(1)
        assert "warm-up" in first, first
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and out == ""
    assert err.strip().splitlines()[-1] == "rlhf_loop_pseudo.py: interrupted (Ctrl-C); nothing " \
                                           "was saved"


# ------------------------------------------------------------------ the hacked actor

def test_make_hacked_actor_rebuilds_a_short_version(tmp_path):
    from rlhf_edu import load_pretrained
    from rlhf_edu.checkpoint import safe_load

    path = tmp_path / "hacked.pt"
    out = run("make_hacked_actor.py", "--steps", "2", "--batch", "2", "--out", str(path))
    assert out.returncode == 0, out.stderr
    assert f"wrote {path}" in out.stdout and "step    2/2" in out.stdout
    meta = safe_load(path)["meta"]
    assert (meta["seed"], meta["steps"], meta["beta"], meta["batch_size"]) == (0, 2, 0.0, 2)
    built, sft = load_pretrained("sft", path), load_pretrained("sft")
    assert built.config == sft.config
    moved = [k for k, v in built.state_dict().items() if not torch.equal(v, sft.state_dict()[k])]
    assert moved, "two PPO steps must change the actor"


def test_shipped_hacked_actor_hacks_the_reward_model():
    from rlhf_edu import PPOConfig, RLHFTrainer, build_models, load_pretrained
    from rlhf_edu.checkpoint import safe_load

    path = SCRIPTS.parent / "rlhf_edu" / "weights" / "hacked.pt"
    ckpt = safe_load(path)
    assert ckpt["meta"]["beta"] == 0.0 and 100 <= ckpt["meta"]["steps"] <= 200
    assert path.stat().st_size < 3e6  # like sft.pt: the actor's GPT only
    hacked, sft = load_pretrained("sft", path), load_pretrained("sft")
    assert not torch.equal(hacked.state_dict()["wte.weight"], sft.state_dict()["wte.weight"])
    figures = {}
    for name, actor in (("sft", sft), ("hacked", hacked)):
        models = build_models(sft=load_pretrained("sft"), reward=load_pretrained("reward"))
        models.actor.gpt.load_state_dict(actor.state_dict())
        # the step's metrics are those of its 32 fresh samples, scored before its update
        m = RLHFTrainer(PPOConfig(seed=1, batch_size=32), models).step()
        figures[name] = dict(rm=m["rm_score"], gold=m["gold_score"], kl=m["kl"])
    sft_f, hacked_f = figures["sft"], figures["hacked"]
    # recorded: SFT rm ~0.1, gold ~-0.1, kl 0; hacked rm ~1.3, gold ~-1.0, kl ~60 nats
    assert hacked_f["rm"] > 1.0 and hacked_f["rm"] > sft_f["rm"] + 0.5, figures
    assert hacked_f["gold"] < -0.5 and hacked_f["gold"] < sft_f["gold"] - 0.3, figures
    assert hacked_f["kl"] > 20 and abs(sft_f["kl"]) < 1e-3, figures
