"""DPO and IPO (rlhf_edu.dpo): the loss against its formula, response log-probs, a short run
that must raise the gold score, and the ``rlhf-edu dpo`` command."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from rlhf_edu.cli import main
from rlhf_edu.dpo import (
    DPOPairs,
    dpo_loss,
    dpo_pairs,
    evaluate_policy,
    make_dpo_pairs,
    pair_logprobs,
    reference_logprobs,
    sequence_logprobs,
    train_dpo,
)
from rlhf_edu.models import Actor, load_pretrained

PC = torch.tensor([-10.0, -12.0, -8.0, -20.0])  # policy, chosen
PR = torch.tensor([-11.0, -9.0, -8.5, -25.0])  # policy, rejected
RC = torch.tensor([-10.5, -11.0, -9.0, -21.0])  # reference, chosen
RR = torch.tensor([-10.0, -10.0, -8.0, -24.0])  # reference, rejected
H = [1.5, -2.0, 1.5, 2.0]  # (PC - PR) - (RC - RR), worked out by hand


@pytest.fixture(scope="module")
def sft():
    return load_pretrained("sft")


@pytest.fixture(scope="module")
def pairs(sft) -> DPOPairs:
    return make_dpo_pairs(sft, 48, seed=3)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_sigmoid_loss_is_the_formula(beta):
    loss, chosen, rejected = dpo_loss(PC, PR, RC, RR, beta=beta, loss="sigmoid")
    want = sum(math.log(1 + math.exp(-beta * h)) for h in H) / 4
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert torch.allclose(chosen, beta * (PC - RC)) and torch.allclose(rejected, beta * (PR - RR))


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_ipo_loss_is_the_formula(beta):
    loss, chosen, rejected = dpo_loss(PC, PR, RC, RR, beta=beta, loss="ipo")
    want = sum((h - 1 / (2 * beta)) ** 2 for h in H) / 4
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert torch.allclose(chosen, beta * (PC - RC)) and torch.allclose(rejected, beta * (PR - RR))


def test_extreme_margin_stays_finite():
    loss, _, _ = dpo_loss(torch.tensor([-3000.0]), torch.tensor([0.0]), torch.tensor([0.0]),
                          torch.tensor([0.0]), beta=0.1)
    assert loss.item() == pytest.approx(300.0, rel=1e-6)


def test_sigmoid_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    loss, chosen, rejected = dpo_loss(pc, pr, RC, RR, beta=0.5)
    assert not chosen.requires_grad and not rejected.requires_grad  # detached, as in TRL
    loss.backward()
    want = torch.tensor([-0.5 / (1 + math.exp(0.5 * h)) / 4 for h in H])
    assert torch.allclose(pc.grad, want) and torch.allclose(pr.grad, -want)
    assert (pc.grad < 0).all() and (pr.grad > 0).all()


@pytest.mark.parametrize("loss, want", [("sigmoid", math.log(2)), ("ipo", 25.0)],
                         ids=["sigmoid", "ipo"])
def test_policy_equal_to_reference_starts_at_log2_and_the_ipo_target(sft, pairs, loss, want):
    with torch.no_grad():
        chosen, rejected = pair_logprobs(sft, pairs)
    value, rc, rr = dpo_loss(chosen, rejected, chosen, rejected, beta=0.1, loss=loss)
    assert value.item() == pytest.approx(want, rel=1e-6)  # ipo: (1 / (2 * 0.1))^2 = 25
    assert (rc == 0).all() and (rr == 0).all()


def test_sequence_logprobs_sum_the_response_tokens_only(sft, pairs):
    """Row by row, unpadded, through the actor's own response scoring (an independent path)."""
    p = pairs.pairs
    got = sequence_logprobs(sft, p.chosen[:6], p.chosen_valid[:6], pairs.prompt_len[:6])
    actor = Actor(sft)
    for i in range(6):
        n, start = int(p.chosen_valid[i].sum()), int(pairs.prompt_len[i])
        row = p.chosen[i:i + 1, :n]
        with torch.no_grad():
            want = actor(row, torch.ones_like(row, dtype=torch.bool), start).logprobs.sum()
        assert got[i].item() == pytest.approx(want.item(), abs=1e-4)
        assert got[i] < 0
    # the prompt is not counted: a longer prompt_len drops the first response token's log-prob
    shorter = sequence_logprobs(sft, p.chosen[:6], p.chosen_valid[:6], pairs.prompt_len[:6] + 1)
    assert (shorter > got).all()


def test_a_minibatch_padded_to_its_own_longest_pair_gives_the_same_losses(sft, pairs):
    """pair_logprobs pads a minibatch to its longest sequence; padding every pair to the
    model's whole context (the longest any dataset can have) gives the same log-probs and
    losses up to float rounding."""
    p = pairs.pairs
    lengths = torch.maximum(p.chosen_valid.sum(1), p.rejected_valid.sum(1))  # (N,)
    idx = lengths.argsort()[:8]  # the shortest pairs: the most padding saved
    C = sft.config.block_size

    def padded(x):  # (n, L) -> (n, C), right-padded with 0 (<pad>; not valid)
        return torch.nn.functional.pad(x, (0, C - x.size(1)))

    with torch.no_grad():
        chosen, rejected = pair_logprobs(sft, pairs, idx)  # (8,) each
        full = [sequence_logprobs(sft, padded(t[idx]), padded(v[idx]), pairs.prompt_len[idx])
                for t, v in ((p.chosen, p.chosen_valid), (p.rejected, p.rejected_valid))]
        policy = copy.deepcopy(sft)  # moved a little from the reference: a nonzero margin
        for q in policy.parameters():
            q.add_(0.01 * torch.randn(q.shape, generator=torch.Generator().manual_seed(0)))
        pc, pr = pair_logprobs(policy, pairs, idx)
        full_policy = [sequence_logprobs(policy, padded(t[idx]), padded(v[idx]),
                                         pairs.prompt_len[idx])
                       for t, v in ((p.chosen, p.chosen_valid), (p.rejected, p.rejected_valid))]
    assert int(lengths[idx].max()) < C  # the minibatch really was padded less
    torch.testing.assert_close(chosen, full[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rejected, full[1], rtol=1e-5, atol=1e-5)
    for loss in ("sigmoid", "ipo"):
        got = dpo_loss(pc, pr, chosen, rejected, beta=0.1, loss=loss)[0]
        want = dpo_loss(*full_policy, *full, beta=0.1, loss=loss)[0]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert got != dpo_loss(chosen, rejected, chosen, rejected, beta=0.1, loss=loss)[0]


@pytest.mark.parametrize("batch_size", [1, 7, 32, 48, 100])
def test_reference_logprobs_in_minibatches_equal_one_forward_over_all_pairs(sft, pairs,
                                                                            batch_size):
    """The reference's log-probs come from one forward per ``batch_size`` pairs, in order
    (a last, shorter minibatch included); one forward over all 48 pairs gives the same
    ``(48,)`` values up to float rounding."""
    with torch.no_grad():
        whole = pair_logprobs(sft, pairs)  # (48,) each
    got = reference_logprobs(sft, pairs, batch_size)
    assert [g.shape for g in got] == [(48,), (48,)]
    assert whole[0].ne(whole[1]).any()  # chosen and rejected really differ
    for g, w in zip(got, whole):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_size, message", [(0, "batch_size"), (2.0, "batch_size")])
def test_reference_logprobs_rejects_a_bad_batch_size(sft, pairs, batch_size, message):
    with pytest.raises(ValueError, match=message):
        reference_logprobs(sft, pairs, batch_size)


def test_prompt_lengths_come_from_the_pairs_prompts(pairs):
    words = [text.split() for text, _ in pairs.pairs.texts]
    for w, n in zip(words, pairs.prompt_len.tolist()):
        assert 3 <= n <= 4 and w[0] in ("the", "i")  # <bos> + a 2- or 3-word prompt
    with pytest.raises(ValueError, match="does not answer prompt 'i loved the'"):
        dpo_pairs(pairs.pairs, ["i loved the"] * len(pairs))


@pytest.mark.parametrize("kwargs, message", [
    ({"beta": 0.0}, "beta must be"),
    ({"beta": float("nan")}, "beta must be"),
    ({"loss": "hinge"}, "unknown DPO loss 'hinge'; expected one of sigmoid, ipo"),
])
def test_dpo_loss_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dpo_loss(PC, PR, RC, RR, **kwargs)


def test_dpo_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"ref_rejected has shape \(3,\) but policy_chosen"):
        dpo_loss(PC, PR, RC, RR[:3])
    with pytest.raises(ValueError, match=r"\(B,\)"):
        dpo_loss(PC[None], PR[None], RC[None], RR[None])


def test_train_dpo_rejects_bad_arguments(sft, pairs):
    with pytest.raises(ValueError, match="pairs must be"):
        train_dpo(sft, pairs.pairs)
    with pytest.raises(ValueError, match="loss must be one of"):
        train_dpo(sft, pairs, loss="ipo2")
    with pytest.raises(ValueError, match="lr must be"):
        train_dpo(sft, pairs, lr=0.0)


def test_short_dpo_run_raises_the_gold_score(sft):
    """640 pairs, 2 epochs (40 steps): measured with seeds 0, 1, 2 (pairs, order; evaluation
    prompts seed + 100), the mean gold score of 512 fresh samples rose by 0.16, 0.15 and 0.17
    from about -0.11; the claim asks for a third of that."""
    data = make_dpo_pairs(sft, 640, seed=0)
    steps = []
    policy, history = train_dpo(sft, data, beta=0.1, epochs=2, batch_size=32, lr=1e-4, seed=0,
                                callback=steps.append)
    assert len(history) == 40 and steps == history
    first = sum(m["reward_accuracy"] for m in history[:8]) / 8
    last = sum(m["reward_accuracy"] for m in history[-8:]) / 8
    assert last > first and history[-1]["reward_margin"] > 0
    before = evaluate_policy(sft, sft, n=512, seed=100)
    after = evaluate_policy(policy, sft, n=512, seed=100)
    assert after["gold_score"] > before["gold_score"] + 0.05, (before, after)
    assert abs(before["kl"]) < 1e-3 < after["kl"]  # the SFT actor is its own reference
    assert set(before) >= {"gold_score", "rm_score", "kl", "well_formed", "repetition"}


def test_cli_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "policy.pt"
    assert main(["dpo", "--pairs", "48", "--epochs", "1", "--batch", "16", "--eval-samples",
                 "16", "--loss", "ipo", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "SFT actor" in text and "DPO policy" in text and "gold score" in text
    assert "3 steps" in text and f"wrote {out}" in text
    policy = load_pretrained("sft", out)  # the policy is saved as an SFT-kind checkpoint
    assert not torch.equal(policy.wte.weight, load_pretrained("sft").wte.weight)


@pytest.mark.parametrize("argv, message", [
    (["--beta", "0"], "argument --beta: must be a finite number in [0.0001, 10000], got '0'"),
    (["--beta", "1e30"], "argument --beta: must be a finite number in [0.0001, 10000], got "
                         "'1e30'"),
    (["--loss", "hinge"], "argument --loss: invalid choice: 'hinge'"),
    (["--pairs", "0"], "argument --pairs: must be an integer in [1, 10**8], got '0'"),
    (["--lr", "nan"], "argument --lr: must be a finite number in [1e-08, 1], got 'nan'"),
    (["--out", "{tmp}"], "argument --out: must name a file to write"),
])
def test_cli_rejects_bad_input_in_one_line(tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(["dpo", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_an_overflowing_gradient_stops_dpo_instead_of_clipping_every_update_to_zero(
        sft, pairs, monkeypatch):
    """`rlhf-edu dpo --beta 1e30` used to exit 0 with unchanged weights: the gradient norm was
    inf and clipping scaled each update to 0. Such a beta is now refused; a gradient that still
    overflows stops training with the settings to change."""
    from rlhf_edu import dpo

    real = dpo.dpo_loss

    def loud(*args, **kwargs):
        value, chosen, rejected = real(*args, **kwargs)
        return value * 3e38, chosen, rejected

    monkeypatch.setattr(dpo, "dpo_loss", loud)
    with pytest.raises(FloatingPointError, match=r"^DPO step 1: the gradient norm is inf .*"
                                                 r"lower beta$"):
        train_dpo(sft, pairs, steps=2, batch_size=8)


def test_dpo_loss_refuses_beta_outside_its_domain():
    for beta in (1e-30, 1e30, 1e308, 0.0, -0.0):
        with pytest.raises(ValueError, match=r"^beta must be in \[0.0001, 10000\]"):
            dpo_loss(PC, PR, RC, RR, beta=beta, loss="ipo")
    loss, _, _ = dpo_loss(PC, PR, RC, RR, beta=1e-4, loss="ipo")  # the edges are finite
    assert math.isfinite(loss.item())
    loss, _, _ = dpo_loss(PC, PR, RC, RR, beta=1e4)
    assert math.isfinite(loss.item())
