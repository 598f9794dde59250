import re

import pytest
import torch

from rlhf_edu.models import build_models
from rlhf_edu.sampling import best_of_n, rejection_sampling
from rlhf_edu.task import PROMPTS


@pytest.fixture(scope="module")
def models():
    return build_models()


def test_best_of_n_keeps_the_highest_score(models):
    prompts = list(PROMPTS[:6])
    best = best_of_n(models, prompts, n=5, generator=torch.Generator().manual_seed(0))
    assert best.all_scores.shape == (6, 5) and best.tokens.size(0) == 6
    torch.testing.assert_close(best.scores, best.all_scores.max(1).values)
    # rescoring the chosen rows reproduces their scores: the rows really are the best ones
    finished = (best.tokens[:, best.prompt_len:] == 2).any(1)
    rescored = models.reward(best.tokens, best.valid) - (~finished).float()
    torch.testing.assert_close(rescored, best.scores, atol=1e-5, rtol=0)
    for prompt, text in zip(prompts, best.texts):
        assert text.startswith(prompt + " ")


def test_best_of_one_is_plain_sampling(models):
    best = best_of_n(models, ["the food"] * 4, n=1, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(best.scores, best.all_scores[:, 0])


def test_rejection_sampling_improves_and_counts_samples():
    history = rejection_sampling(build_models(), steps=12, prompts_per_step=8, n=4, lr=3e-4,
                                 seed=0)
    assert history[-1]["samples"] == 12 * 8 * 4
    early = sum(m["rm_score"] for m in history[:3]) / 3
    late = sum(m["rm_score"] for m in history[-3:]) / 3
    assert late > early, (early, late)
    assert all(m["best_rm_score"] >= m["rm_score"] for m in history)


def test_bad_inputs(models):
    with pytest.raises(ValueError, match=re.escape("n must be an int in [1, 10**8], got 0")):
        best_of_n(models, ["the food"], n=0)
    with pytest.raises(ValueError, match="prompts is empty"):
        best_of_n(models, [], n=2)


def test_expected_best_of_n_and_its_kl_against_enumeration():
    import itertools
    import math

    from rlhf_edu.sampling import (
        best_of_n_kl,
        best_of_n_kl_bound,
        best_of_n_probs,
        expected_best_of_n,
    )

    scores = torch.tensor([0.3, -1.0, 2.0, 0.3, 0.5])
    for n in (1, 2, 3):
        draws = list(itertools.product(scores.tolist(), repeat=n))
        assert expected_best_of_n(scores, n) == pytest.approx(
            sum(max(d) for d in draws) / len(draws))
    probs, rewards = torch.tensor([0.2, 0.5, 0.3]), torch.tensor([2.0, 0.0, 1.0])
    torch.testing.assert_close(best_of_n_probs(probs, rewards, 2),
                               torch.tensor([0.36, 0.25, 0.39]))
    uniform = torch.full((500,), 1 / 500, dtype=torch.float64)
    exact = best_of_n_kl(uniform, torch.arange(500.0, dtype=torch.float64), 4)
    assert best_of_n_kl_bound(4) == pytest.approx(math.log(4) - 0.75)
    assert exact < best_of_n_kl_bound(4) and exact == pytest.approx(best_of_n_kl_bound(4),
                                                                    abs=0.01)
    with pytest.raises(ValueError, match="rewards must be distinct"):
        best_of_n_probs(probs, torch.tensor([1.0, 1.0, 0.0]), 2)
