"""The graded tests name the learner's actual mistake, not a neighbouring one.

Typical wrong answers are written here as plain functions and passed, as the ``ex`` object, to
the graded test functions themselves; each must fail with the message meant for its mistake.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GRADED = ROOT / "tests" / "exercises"


def graded(name: str, folder: Path = GRADED):
    sys.path.insert(0, str(GRADED))
    try:
        spec = importlib.util.spec_from_file_location(f"_messages_{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(GRADED))


def failure(test, ex, *args) -> str:
    with pytest.raises(pytest.fail.Exception) as info:
        test(ex, *args)
    return str(info.value)


def gae_loop(rewards, values, mask, gamma=1.0, lam=0.95, *, bootstrap_padding=False,
             carry_padding=False):
    """GAE backwards in time; the two flags make the two classic padding mistakes."""
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    running = torch.zeros(B)
    for t in reversed(range(T)):
        nxt = values[:, t + 1] if t + 1 < T else torch.zeros(B)
        if not bootstrap_padding and t + 1 < T:
            nxt = nxt * mask[:, t + 1]
        delta = rewards[:, t] + gamma * nxt - values[:, t]
        running = delta + gamma * lam * running
        if not carry_padding:
            running = running * mask[:, t]
        adv[:, t] = running
    adv = adv * mask
    return adv, (adv + values) * mask


ex03_gae = graded("ex03_gae", ROOT / "solutions")
ex04_ppo_loss = graded("ex04_ppo_loss", ROOT / "solutions")


@pytest.fixture(scope="module")
def ex03():
    return graded("test_ex03_gae")


@pytest.fixture(scope="module")
def ex04():
    return graded("test_ex04_ppo_loss")


def test_the_loop_without_mistakes_passes(ex03):
    ex03.test_padding_is_zero_and_not_bootstrapped(SimpleNamespace(gae=gae_loop))
    ex03.test_padding_is_zero_and_not_bootstrapped(ex03_gae)


def test_value_bootstrapped_from_padding_is_named(ex03):
    wrong = SimpleNamespace(gae=lambda *a, **k: gae_loop(*a, **k, bootstrap_padding=True))
    text = failure(ex03.test_padding_is_zero_and_not_bootstrapped, wrong)
    assert "no value is bootstrapped from the padding" in text, text
    assert "carried over" not in text, text


def test_advantage_carried_over_from_padding_is_named(ex03):
    wrong = SimpleNamespace(gae=lambda *a, **k: gae_loop(*a, **k, carry_padding=True))
    text = failure(ex03.test_padding_is_zero_and_not_bootstrapped, wrong)
    assert "A_(t+1) was carried over from the padding" in text, text
    assert "bootstrapped" not in text, text
    text = failure(ex03.test_random_against_the_definition, wrong, 0.99, 0.9)
    assert "carried over from the padding" in text, text


def value_loss_clamping_the_value(values, old_values, returns, mask, vf_clip=0.2):
    clipped = torch.clamp(values, -vf_clip, vf_clip)
    loss = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * (loss * mask).sum() / mask.sum()


@pytest.mark.parametrize("case", ["inside-old-1", "clipped-old-1", "clipped-down-old-1"])
def test_clipping_the_value_instead_of_its_change_fails_by_hand(ex04, case):
    ids = ["inside", "clipped", "unclipped-larger", "inside-old-1", "clipped-old-1",
           "clipped-down-old-1"]
    args = ex04.VALUE_CASES[ids.index(case)]
    wrong = SimpleNamespace(ppo_value_loss=value_loss_clamping_the_value)
    text = failure(ex04.test_value_loss_clipping_regimes, wrong, *args)
    assert "the value itself was clipped" in text, text
    ex04.test_value_loss_clipping_regimes(ex04_ppo_loss, *args)  # the solution passes


def test_clipping_the_value_instead_of_its_change_is_named_on_random_batches(ex04):
    wrong = SimpleNamespace(ppo_value_loss=value_loss_clamping_the_value)
    text = failure(ex04.test_value_loss_random_against_package, wrong, 0.2)
    assert "the value itself was clipped" in text, text


# ------------------------------------------------------------------ Exercise 8

ex08_group_advantages = graded("ex08_group_advantages", ROOT / "solutions")


@pytest.fixture(scope="module")
def ex08():
    return graded("test_ex08_group_advantages")


def grpo_population_std(scores, group_size, scale=True, eps=1e-4):
    """GRPO with the population std (dividing by G): right for a group of equal rewards."""
    groups = scores.view(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (groups.std(dim=1, keepdim=True, correction=0) + eps)
    return centred.reshape(-1)


def test_equal_rewards_test_names_the_group_that_fails(ex08):
    wrong = SimpleNamespace(grpo_advantages=grpo_population_std)
    text = failure(ex08.test_grpo_group_of_equal_rewards_is_zero, wrong)
    assert text.startswith("grpo_advantages[4] is"), text  # prompt 0's advantages are right
    assert "prompt 1 (rows 4 to 7)" in text and "population std" in text, text
    assert "prompt 0" not in text and "exactly 0" not in text, text
    ex08.test_grpo_group_of_equal_rewards_is_zero(ex08_group_advantages)


def test_equal_rewards_test_names_prompt_0_when_it_fails(ex08):
    def nan_for_equal_rewards(scores, group_size, scale=True, eps=1e-4):
        groups = scores.view(-1, group_size)
        centred = groups - groups.mean(dim=1, keepdim=True)
        return (centred / groups.std(dim=1, keepdim=True)).reshape(-1)  # no eps: 0 / 0

    text = failure(ex08.test_grpo_group_of_equal_rewards_is_zero,
                   SimpleNamespace(grpo_advantages=nan_for_equal_rewards))
    assert text.startswith("grpo_advantages[0] is nan"), text
    assert "every response to prompt 0 (rows 0 to 3) got 0.7" in text, text
    assert "0 / 0 is NaN" in text and "prompt 1" not in text, text


def test_bool_mask_test_names_unmasked_padding(ex08):
    def unmasked(adv, mask):  # every position gets the advantage, padding included
        return adv[:, None].expand(mask.shape).clone()

    text = failure(ex08.test_spread_over_tokens_with_a_bool_mask,
                   SimpleNamespace(spread_over_tokens=unmasked))
    assert text.startswith("spread_over_tokens[0, 2] is 1.5 but should be 0"), text
    assert "position (0, 2) is padding" in text and "convert it" not in text, text
    ex08.test_spread_over_tokens_with_a_bool_mask(ex08_group_advantages)


def test_bool_mask_test_names_a_response_token_that_lost_its_advantage(ex08):
    def inverted(adv, mask):  # the advantage on the padding, 0 on the response
        return adv[:, None] * (~mask).to(adv.dtype)

    text = failure(ex08.test_spread_over_tokens_with_a_bool_mask,
                   SimpleNamespace(spread_over_tokens=inverted))
    assert text.startswith("spread_over_tokens[0, 0] is 0 but should be 1.5"), text
    assert "position (0, 0) is a response token" in text, text


# ------------------------------------------------------------------ Exercises 9 and 10

ex09_best_of_n = graded("ex09_best_of_n", ROOT / "solutions")
ex10_communication = graded("ex10_communication", ROOT / "solutions")


@pytest.fixture(scope="module")
def ex09():
    return graded("test_ex09_best_of_n")


@pytest.fixture(scope="module")
def ex10():
    return graded("test_ex10_communication")


def test_the_mean_instead_of_the_maximum_is_named(ex09):
    wrong = SimpleNamespace(expected_best_of_n=lambda scores, n: float(scores.mean()))
    text = failure(ex09.test_expected_best_of_2_of_four_scores, wrong)
    assert text.startswith("expected_best_of_n(scores=[0.0, 1.0, 2.0, 3.0], n=2) is 1.5"), text
    assert "that is the mean of the scores" in text, text
    ex09.test_expected_best_of_2_of_four_scores(ex09_best_of_n)


def test_log_n_without_its_correction_and_a_flipped_sign_are_named(ex09):
    import math

    text = failure(ex09.test_kl_formula, SimpleNamespace(best_of_n_kl_bound=math.log), 4)
    assert "log n alone" in text and "sign" not in text, text
    flipped = SimpleNamespace(best_of_n_kl_bound=lambda n: math.log(n) + (n - 1) / n)
    text = failure(ex09.test_kl_formula, flipped, 4)
    assert "the correction's sign is flipped" in text, text


def test_kls_added_over_rounds_are_named(ex09):
    wrong = SimpleNamespace(
        compounded_kl_bound=lambda n, rounds: rounds * ex09_best_of_n.best_of_n_kl_bound(n))
    text = failure(ex09.test_rounds_compound, wrong, 4, 2)
    assert "best-of-4 of best-of-4 is best-of-16" in text, text


def test_ids_without_the_prompt_are_named(ex10):
    def response_only(B, P, T, placement):
        out = ex10_communication.frozen_model_bytes(B, P, T, placement)
        return {k: B * T * 9 if k.startswith("to_") and v else v for k, v in out.items()}

    text = failure(ex10.test_the_chapters_batch_split_over_two_gpus,
                   SimpleNamespace(frozen_model_bytes=response_only))
    assert "['to_reward'] is 3,600 but should be 3,744" in text, text
    assert "the frozen models read the prompt too" in text, text


def test_one_allreduce_per_step_is_named(ex10):
    def once(*args, optimizer_steps=1, **kwargs):
        return ex10_communication.step_bytes(*args, **kwargs)

    text = failure(ex10.test_a_7b_step_on_eight_gpus, SimpleNamespace(step_bytes=once))
    assert "['gradient_allreduce']" in text and "one per optimizer step" in text, text


def test_the_reduce_scatter_alone_is_named(ex10):
    wrong = SimpleNamespace(ring_allreduce_bytes=lambda g, n: (n - 1) / n * g)
    text = failure(ex10.test_ring_allreduce_simulated, wrong, 3)
    assert "GPU 0 sent 80 numbers" in text and "the reduce-scatter alone" in text, text
# ------------------------------------------------------------------ Exercise 12: entropy

ex12_entropy = graded("ex12_entropy", ROOT / "solutions")


@pytest.fixture(scope="module")
def ex12():
    return graded("test_ex12_entropy")


def entropy_variant(*, naive=False, base2=False, sign=1.0, chosen=False, use_t=True):
    """token_entropy with one of the usual mistakes switched on."""
    def token_entropy(logits, temperature=1.0):
        x = logits / temperature if use_t else logits
        logp = torch.log(torch.softmax(x, -1)) if naive else torch.log_softmax(x, -1)
        if chosen:  # -log p of the most likely token only
            return -logp.max(-1).values
        h = -(logp.exp() * logp).sum(-1) * sign
        return h / torch.log(torch.tensor(2.0)) if base2 else h
    return token_entropy


@pytest.mark.parametrize("mistake, test, wanted", [
    ({"naive": True}, "test_large_logits_stay_finite", "take log p from torch.log_softmax"),
    ({"base2": True}, "test_uniform_is_log_v", "log base 2"),
    ({"sign": -1.0}, "test_hand_made_distribution", "the sign is flipped"),
    ({"chosen": True}, "test_random_against_the_package", "-log p of a single token"),
    ({"use_t": False}, "test_temperature", "the temperature is not applied"),
])
def test_entropy_mistakes_are_named(ex12, mistake, test, wanted):
    args = (2.0,) if test == "test_temperature" else ()
    text = failure(getattr(ex12, test), SimpleNamespace(token_entropy=entropy_variant(**mistake)),
                   *args)
    assert wanted in text, text
    getattr(ex12, test)(ex12_entropy, *args)


def test_entropy_mean_over_padding_is_named(ex12):
    def over_padding(logits, mask, temperature=1.0):
        return ex12_entropy.token_entropy(logits, temperature).mean()

    text = failure(ex12.test_masked_mean_skips_padding,
                   SimpleNamespace(masked_entropy=over_padding))
    assert "padding included" in text, text
    ex12.test_masked_mean_skips_padding(ex12_entropy)


# ------------------------------------------------------------------ Exercise 11: moving reference

ex11_moving_reference = graded("ex11_moving_reference", ROOT / "solutions")


@pytest.fixture(scope="module")
def ex11():
    return graded("test_ex11_moving_reference")


def test_reference_copied_one_step_early_is_named(ex11):
    wrong = SimpleNamespace(reference_version=lambda step, every: step // every * every
                            if every else 0)
    text = failure(ex11.test_reference_version, wrong, 3)
    assert text.startswith("reference_version(3, 3) is 3 but should be 0"), text
    assert "is not there yet" in text, text
    ex11.test_reference_version(ex11_moving_reference, 3)


def test_reversed_kl_is_named(ex11):
    wrong = SimpleNamespace(kl=lambda logp, logq: ex11_moving_reference.kl(logq, logp))
    text = failure(ex11.test_kl_hand_made, wrong)
    assert "KL(q || p)" in text, text


def test_drift_against_the_moving_reference_is_named(ex11):
    def against_reference(policies, every):
        to_ref, _ = ex11_moving_reference.kl_to_reference_and_sft(policies, every)
        return to_ref, to_ref.clone()

    text = failure(ex11.test_moving_reference_sees_only_the_last_window,
                   SimpleNamespace(kl_to_reference_and_sft=against_reference))
    assert text.startswith("kl_to_sft[4]"), text
    assert "measure it against version 0" in text, text


# ------------------------------------------------------------------ Exercise 13: pass@k

ex13_pass_at_k = graded("ex13_pass_at_k", ROOT / "solutions")


@pytest.fixture(scope="module")
def ex13():
    return graded("test_ex13_pass_at_k")


def float_comb(a: int, b: int) -> float:
    """C(a, b) from factorials taken as floats: overflows from a = 171 on."""
    return float(math.factorial(a)) / (float(math.factorial(b)) * float(math.factorial(a - b)))


def float_loop_comb(a: int, b: int) -> float:
    """C(a, b) multiplied up in floats: inf once it passes 1.8e308."""
    out = 1.0
    for i in range(b):
        out *= (a - i) / (i + 1)
    return out


def early_one(formula):
    """``formula`` with the n - c < k case answered first, as it should be."""
    return lambda n, c, k: 1.0 if n - c < k else formula(n, c, k)


def product_over(shift_lo: int, shift_hi: int):
    """1 - prod (1 - k / i) for i in range(n - c + 1 + shift_lo, n + 1 + shift_hi)."""
    return early_one(lambda n, c, k: 1 - math.prod(
        1 - k / i for i in range(n - c + 1 + shift_lo, n + 1 + shift_hi)))


PASS_AT_K_MISTAKES = {
    "biased": (early_one(lambda n, c, k: 1 - (1 - c / n) ** k),
               "test_two_attempts_of_five_samples", "looks like the biased estimator"),
    "naive power": (early_one(lambda n, c, k: (c / n) ** k),
                    "test_four_attempts_of_ten_samples", "looks like (c/n)^k"),
    "all wrong": (early_one(lambda n, c, k: math.comb(n - c, k) / math.comb(n, k)),
                  "test_two_attempts_of_five_samples", "pass@k is 1 minus it"),
    "float factorials": (early_one(lambda n, c, k: 1 - float_comb(n - c, k) / float_comb(n, k)),
                         "test_two_hundred_samples", "OverflowError"),
    "float comb": (early_one(lambda n, c, k: 1 - float(math.comb(n - c, k))
                             / float(math.comb(n, k))),
                   "test_two_thousand_samples", "OverflowError"),
    "float loop comb": (early_one(lambda n, c, k: 1 - float_loop_comb(n - c, k)
                                  / float_loop_comb(n, k)),
                        "test_two_thousand_samples", "is nan but should be 0.5"),
    "range from n - c": (product_over(-1, -1), "test_two_attempts_of_five_samples",
                         "off by one"),
    "range to n - 1": (product_over(0, -1), "test_four_attempts_of_ten_samples", "off by one"),
    "range with an extra factor": (product_over(-1, 0), "test_random_cases", "off by one"),
    "no 1.0, logarithms": (lambda n, c, k: -math.expm1(sum(
        math.log(1 - k / i) for i in range(n - c + 1, n + 1))),
        "test_fewer_wrong_than_attempts_is_one", "is exactly 1.0"),
    "no 1.0, factorials": (lambda n, c, k: 1 - math.factorial(n - c) * math.factorial(n - k)
                           / (math.factorial(n) * math.factorial(n - c - k)),
                           "test_fewer_wrong_than_attempts_is_one", "is exactly 1.0"),
}
NAMED_BY = {"looks like the biased estimator", "looks like (c/n)^k", "pass@k is 1 minus it",
            "computed as floats", "off by one", "is exactly 1.0"}


@pytest.mark.parametrize("mistake", list(PASS_AT_K_MISTAKES))
def test_pass_at_k_mistakes_are_named(ex13, mistake):
    wrong, test, wanted = PASS_AT_K_MISTAKES[mistake]
    args = (10, 8, 3) if test == "test_fewer_wrong_than_attempts_is_one" else ()
    text = failure(getattr(ex13, test), SimpleNamespace(pass_at_k=wrong), *args)
    assert wanted in text and "\n" not in text, text
    named = {m for m in NAMED_BY if m in text}
    assert len(named) == 1 or mistake.startswith("float"), (named, text)
    getattr(ex13, test)(ex13_pass_at_k, *args)


def test_pass_at_k_of_the_mean_count_is_named(ex13):
    def of_the_mean(counts, n, ks):
        mean = sum(counts) / len(counts)
        return [1 - math.prod(1 - mean / (n - j) for j in range(k)) for k in ks]

    text = failure(ex13.test_curve_of_always_and_never,
                   SimpleNamespace(pass_at_k_curve=of_the_mean))
    assert "at k = 2" in text and "the pass@k of the average count" in text, text


def test_pass_at_k_curve_summed_is_named(ex13):
    def summed(counts, n, ks):
        return [sum(ex13_pass_at_k.pass_at_k(n, c, k) for c in counts) for k in ks]

    text = failure(ex13.test_curve_of_three_problems, SimpleNamespace(pass_at_k_curve=summed))
    assert "that is the sum over the problems" in text, text


def test_pass_at_k_curve_blames_a_wrong_pass_at_k(ex13):
    biased = PASS_AT_K_MISTAKES["biased"][0]
    wrong = SimpleNamespace(pass_at_k=biased, pass_at_k_curve=lambda counts, n, ks: [
        sum(biased(n, c, k) for c in counts) / len(counts) for k in ks])
    text = failure(ex13.test_curve_over_many_problems, wrong)
    assert "the mean of your pass_at_k is right, but pass_at_k is not" in text, text
    ex13.test_curve_over_many_problems(ex13_pass_at_k)
