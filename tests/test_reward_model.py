"""The reward model's measuring tools: label noise, accuracy against gold and labels, the
training curve recorded through ``train_reward_model``'s callback, and calibration bins."""

import math

import pytest
import torch

from rlhf_edu.model import GPT, GPTConfig
from rlhf_edu.models import RewardModel
from rlhf_edu.pretrain import encode_texts
from rlhf_edu.reward_model import (
    PreferencePairs,
    TrainingCurve,
    calibration_bins,
    label_noise,
    pair_scores,
    pairwise_accuracy,
    reliability_bins,
    train_reward_model,
)
from rlhf_edu.task import Tokenizer, gold_score, sample_corpus

TOK = Tokenizer()
SMALL = GPTConfig(block_size=48, vocab_size=64, n_layer=1, n_head=2, n_embd=16)


def make_pairs(chosen: list[str], rejected: list[str]) -> PreferencePairs:
    """Pairs labelled by hand: ``chosen[i]`` was preferred over ``rejected[i]``."""
    c_ids, c_valid = encode_texts(chosen, TOK)
    r_ids, r_valid = encode_texts(rejected, TOK)
    return PreferencePairs(c_ids, c_valid, r_ids, r_valid,
                           torch.tensor([gold_score(t) for t in chosen]),
                           torch.tensor([gold_score(t) for t in rejected]),
                           list(zip(chosen, rejected)))


class CountingRM(RewardModel):
    """A reward model whose raw score is the number of "great" tokens: easy to reason about."""

    def raw(self, tokens, valid=None):
        return (tokens == TOK.stoi["great"]).sum(1).float()


GOOD, BAD = "the food was great .", "the food was awful ."  # gold +1/3 and -1/3
GREAT3 = "the food was great great great ."  # malformed by repeats: gold -1, three "great"
OKAY = "the food was okay ."  # gold 0, no "great"


def test_label_noise_is_the_share_of_pairs_labelled_against_the_gold_order():
    # 4 pairs with different gold, 1 of them labelled against it; 1 tie (not counted)
    pairs = make_pairs([GOOD, GOOD, OKAY, BAD, OKAY], [BAD, OKAY, BAD, GOOD, OKAY])
    assert label_noise(pairs) == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="no pair has different gold scores"):
        label_noise(make_pairs([OKAY], [OKAY]))


def test_accuracy_against_gold_and_against_labels():
    rm = CountingRM(GPT(SMALL))
    # RM scores (great-counts): chosen 1, 3, 0, 0 ; rejected 0, 1, 1, 0
    pairs = make_pairs([GOOD, GREAT3, OKAY, BAD], [BAD, GOOD, GOOD, OKAY])
    gold_c, gold_r = pairs.gold_chosen, pairs.gold_rejected
    rc, rr = pair_scores(rm, pairs)
    assert rc.tolist() == [1, 3, 0, 0] and rr.tolist() == [0, 1, 1, 0]
    differ = gold_c != gold_r  # all four differ
    assert bool(differ.all())
    # labels: chosen strictly above rejected in pairs 0 and 1; the tie in pair 3 is wrong
    assert pairwise_accuracy(rm, pairs, against="labels") == pytest.approx(2 / 4)
    # gold order: pair 0 agrees (both prefer chosen); pair 1: RM prefers GREAT3, gold prefers
    # GOOD: disagree; pair 2: both prefer GOOD (rejected): agree; pair 3: RM tie, gold prefers
    # OKAY (rejected): counted as agreeing, as pairwise_accuracy always has
    expected = ((rc > rr) == (gold_c > gold_r)).float().mean().item()
    assert expected == pytest.approx(3 / 4)
    assert pairwise_accuracy(rm, pairs) == pytest.approx(3 / 4)
    assert pairwise_accuracy(rm, pairs, against="gold") == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="against must be one of 'gold', 'labels'"):
        pairwise_accuracy(rm, pairs, against="human")


def explicit_bins(rc: torch.Tensor, rr: torch.Tensor, bins: int):
    """The reliability table by a plain loop over both orientations of every pair."""
    count, p_sum, y_sum = [0] * bins, [0.0] * bins, [0.0] * bins
    for a, b in zip(rc.tolist(), rr.tolist()):
        for p, y in ((1 / (1 + math.exp(-(a - b))), 1.0), (1 / (1 + math.exp(-(b - a))), 0.0)):
            k = min(int(p * bins), bins - 1)
            count[k] += 1
            p_sum[k] += p
            y_sum[k] += y
    return count, p_sum, y_sum


def test_reliability_bins_match_an_explicit_loop():
    g = torch.Generator().manual_seed(0)
    rc, rr = torch.randn(300, generator=g) * 2, torch.randn(300, generator=g) * 2
    out = reliability_bins(rc, rr, bins=8)
    count, p_sum, y_sum = explicit_bins(rc, rr, 8)
    assert out["count"].tolist() == count and sum(count) == 600
    for k in range(8):
        if count[k]:
            assert out["predicted"][k].item() == pytest.approx(p_sum[k] / count[k], abs=1e-9)
            assert out["observed"][k].item() == pytest.approx(y_sum[k] / count[k], abs=1e-9)
        else:
            assert math.isnan(out["predicted"][k].item())
    ece = sum(abs(p - y) for p, y in zip(p_sum, y_sum)) / 600  # sum |count·(pred - obs)|
    assert out["ece"] == pytest.approx(ece, abs=1e-9)
    assert out["edges"].tolist() == pytest.approx([k / 8 for k in range(9)])
    # each pair counted both ways: the table is symmetric about 1/2
    assert out["count"].tolist() == out["count"].flip(0).tolist()
    both = out["count"] > 0
    assert torch.allclose(out["observed"][both], 1 - out["observed"].flip(0)[both])


def test_a_tie_counts_once_each_way_in_the_middle_bin():
    out = reliability_bins(torch.tensor([0.0, 2.0]), torch.tensor([0.0, 0.0]), bins=5)
    # tie: p = 1/2 twice (outcomes 1 and 0) in bin 2; the other pair: p = 0.881 and 0.119
    assert out["count"].tolist() == [1, 0, 2, 0, 1]
    assert out["observed"][2].item() == 0.5 and out["predicted"][2].item() == 0.5
    assert out["observed"][4].item() == 1.0 and out["observed"][0].item() == 0.0


def test_bradley_terry_labels_are_calibrated_and_overconfident_scores_are_not():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(20_000, generator=g), torch.randn(20_000, generator=g)
    a_wins = torch.rand(20_000, generator=g) < torch.sigmoid(a - b)  # labels drawn by B-T
    rc, rr = torch.where(a_wins, a, b), torch.where(a_wins, b, a)
    true_ece = reliability_bins(rc, rr)["ece"]
    assert true_ece < 0.02
    assert reliability_bins(3 * rc, 3 * rr)["ece"] > true_ece + 0.05  # overconfident
    assert reliability_bins(rc / 3, rr / 3)["ece"] > true_ece + 0.05  # underconfident
    # a shift common to both responses changes nothing: only differences matter
    assert reliability_bins(rc + 7, rr + 7)["ece"] == pytest.approx(true_ece, abs=1e-9)


def test_calibration_bins_read_raw_scores_not_z_scores():
    rm = CountingRM(GPT(SMALL))
    rm.mean.fill_(0.5)
    rm.std.fill_(10.0)  # z-scores would squash every difference tenfold
    pairs = make_pairs([GREAT3, GOOD, OKAY], [OKAY, OKAY, GOOD])
    out = calibration_bins(rm, pairs, bins=4)
    ref = reliability_bins(torch.tensor([3.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]), bins=4)
    assert out["count"].tolist() == ref["count"].tolist()
    assert out["ece"] == pytest.approx(ref["ece"])


def corpus_pairs(n: int) -> PreferencePairs:
    """``n`` pairs of grammar reviews, the higher gold score chosen (ties kept as they come)."""
    texts = sample_corpus(2 * n, seed=3)
    a, b = texts[:n], texts[n:]
    first = [gold_score(x) >= gold_score(y) for x, y in zip(a, b)]
    return make_pairs([x if f else y for x, y, f in zip(a, b, first)],
                      [y if f else x for x, y, f in zip(a, b, first)])


def test_training_curve_records_every_step_and_leaves_training_unchanged():
    torch.manual_seed(0)
    sft = GPT(SMALL).eval()
    train, heldout = corpus_pairs(40), corpus_pairs(60).split(40)[1]
    manual = []

    def both(step, loss, rm):
        curve(step, loss, rm)
        if step % 3 == 0:  # the same measurement through the public function
            manual.append((pairwise_accuracy(rm, heldout),
                           pairwise_accuracy(rm, heldout, against="labels")))
            rm.train()

    curve = TrainingCurve(heldout, every=3)
    with_cb = train_reward_model(sft, train, epochs=2, batch_size=8, seed=4, progress=False,
                                 callback=both)
    without = train_reward_model(sft, train, epochs=2, batch_size=8, seed=4, progress=False)
    steps = 2 * math.ceil(40 / 8)
    assert curve.step == list(range(1, steps + 1)) and len(curve.loss) == steps
    assert curve.eval_step == [3, 6, 9]
    assert list(zip(curve.accuracy, curve.label_accuracy)) == manual
    assert curve.loss[0] == pytest.approx(math.log(2), abs=1e-6)  # zero head: r_c = r_r
    assert not with_cb.training
    for (k, v), w in zip(with_cb.state_dict().items(), without.state_dict().values()):
        assert torch.equal(v, w), k


def test_bad_inputs_are_refused_in_one_line():
    pairs = make_pairs([GOOD], [BAD])
    sft = GPT(SMALL)
    with pytest.raises(ValueError, match="callback must be a callable .* got int"):
        train_reward_model(sft, pairs, callback=3, progress=False)
    with pytest.raises(ValueError, match="every must be"):
        TrainingCurve(pairs, every=0)
    with pytest.raises(ValueError, match="no pair has different gold scores"):
        TrainingCurve(make_pairs([OKAY], [OKAY]))
    with pytest.raises(ValueError, match="r_chosen has shape .* r_rejected has shape"):
        reliability_bins(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"r_chosen must have shape \(N,\)"):
        reliability_bins(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="bins must be"):
        reliability_bins(torch.zeros(2), torch.zeros(2), bins=0)
    with pytest.raises(ValueError, match="r_rejected"):
        reliability_bins(torch.zeros(2), torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="floating-point"):
        reliability_bins(torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
