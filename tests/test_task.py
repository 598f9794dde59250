import itertools
import random

import pytest

from rlhf_edu.task import (
    NOUNS,
    PROMPTS,
    VOCAB,
    Tokenizer,
    gold_clause_scores,
    gold_score,
    is_well_formed,
    parse,
    repetition,
    sample_corpus,
    sample_review,
)


def test_corpus_is_well_formed_repeat_free_and_seeded():
    corpus = sample_corpus(3000, seed=1)
    assert all(is_well_formed(t) for t in corpus)
    assert all(repetition(t) == 0 for t in corpus)
    assert corpus == sample_corpus(3000, seed=1)
    assert corpus != sample_corpus(3000, seed=2)
    clauses = [len(parse(t).polarities) for t in corpus]
    assert set(clauses) == {1, 2, 3}


def test_corpus_covers_the_vocabulary_and_mixes_sentiment():
    corpus = sample_corpus(3000, seed=0)
    used = {w for t in corpus for w in t.split()}
    assert used == set(VOCAB) - {"<pad>", "<bos>", "<eos>"}
    sentiments = [parse(t).sentiment for t in corpus]
    pos = sum(s > 0 for s in sentiments) / len(corpus)
    neg = sum(s < 0 for s in sentiments) / len(corpus)
    assert 0.25 < pos < 0.45 and 0.25 < neg < 0.45


@pytest.mark.parametrize("text, expected", [
    ("the food was great .", 1 / 3),
    ("the food was awful !", -1 / 3),
    ("the food was okay .", 0.0),
    ("i loved the wine and the staff was really rude .", 0.0),
    ("the food was great and the service was good but the view was bad .", 1 / 3),
    ("the food was great and the wine was good and i loved the view .", 1.0),
    ("the food was great and the food was nice .", 2 / 3 - 1),  # one repeated noun
    ("the food was great and the wine was great and i loved the view .", 1.0 - 1.0),
    ("the food was great and the wine was great and the view was great .", -1.0),
    ("the food was awful and the food was awful and the food was awful .", -1.0),  # floored
    ("the food was great great great amazing amazing !", -1.0),  # malformed
    ("the food was great", -1.0),  # unfinished
    ("the food was great and .", -1.0),
    ("the food was great and the wine was good and the view was nice and the room was fresh .",
     -1.0),  # four clauses
    ("i loved food .", -1.0),
    (".", -1.0),
    ("", -1.0),
])
def test_gold_score_hand_examples(text, expected):
    assert gold_score(text) == pytest.approx(expected)


def test_gold_score_is_bounded():
    rng = random.Random(0)
    words = list(VOCAB[3:])
    for _ in range(2000):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 20)))
        assert -1.0 <= gold_score(text) <= 1.0
    for _ in range(500):
        assert -1.0 <= gold_score(sample_review(rng)) <= 1.0


def test_tokenizer_round_trip_and_errors():
    tok = Tokenizer()
    text = "the food was really great and the service was slow ."
    ids = tok.encode(text, bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == text
    assert tok.decode(ids + [tok.pad_id, 5]) == text  # stops at <eos>
    with pytest.raises(ValueError, match="unknown word 'pizza' at position 1"):
        tok.encode("the pizza was great .")


def test_encode_batch_left_pads_prompts():
    tok = Tokenizer()
    ids, valid = tok.encode_batch(["the food", "i loved the"])
    assert ids.shape == (2, 4)
    assert valid.tolist() == [[False, True, True, True], [True, True, True, True]]
    assert ids[0, 0] == tok.pad_id and ids[0, 1] == tok.bos_id


def test_prompts_are_review_openings():
    tok = Tokenizer()
    for p in PROMPTS:
        tok.encode(p)
        assert any(t.startswith(p + " ") for t in sample_corpus(4000, 0)), p


def _malformed_or_repetitive(rng: random.Random) -> str:
    """A review with a repeated content word, a clause too many, a dropped word or noise."""
    review = sample_review(rng).split()
    kind = rng.randrange(4)
    if kind == 0:  # repeat a clause: every content word of it repeats
        clause = " ".join(review[:-1]).split(" and ")[0].split(" but ")[0]
        return f"{clause} and {clause} {review[-1]}"
    if kind == 1:  # drop one word
        del review[rng.randrange(len(review))]
        return " ".join(review)
    if kind == 2:  # noise from the whole vocabulary
        return " ".join(rng.choice(VOCAB[3:]) for _ in range(rng.randint(0, 14)))
    return " ".join(review[:-1] + ["and", "the", "food", "was", "great", review[-1]])


def test_gold_clause_scores_sum_exactly_to_the_gold_score():
    rng = random.Random(3)
    texts = [sample_review(rng) for _ in range(1500)]
    texts += [_malformed_or_repetitive(rng) for _ in range(1500)] + ["", ".", "the food was"]
    kinds = {"repeats": 0, "malformed": 0}
    for text in texts:
        parts = gold_clause_scores(text)
        assert sum(v for _, v in parts) == gold_score(text), text
        words = text.split()
        assert [i for i, _ in parts] == sorted(i for i, _ in parts)
        assert all(0 <= i < max(len(words), 1) for i, _ in parts)
        kinds["malformed"] += parse(text) is None
        kinds["repeats"] += parse(text) is not None and repetition(text) > 0
    assert kinds["malformed"] > 300 and kinds["repeats"] > 100  # both kinds were exercised


def test_gold_clause_scores_every_polarity_and_repeat_count():
    """Every review shape the gold score distinguishes: 1-3 clauses of each polarity, 0-5
    repeated words (the floor at -1 included); sums exact, clause parts where they belong."""
    adjective = {1: "great", -1: "awful", 0: "okay"}
    for n in (1, 2, 3):
        for polarities in itertools.product((1, -1, 0), repeat=n):
            for repeats in range(6):
                nouns = [NOUNS[0]] * min(repeats + 1, n) + list(NOUNS[1:n])
                clauses = [f"the {nouns[k]} was {adjective[p]}" for k, p in enumerate(polarities)]
                text = " and ".join(clauses) + " ."
                expected = max(-1.0, sum(polarities) / 3 - repetition(text))
                parts = gold_clause_scores(text)
                assert gold_score(text) == pytest.approx(expected)
                assert sum(v for _, v in parts) == gold_score(text), text
                words = text.split()
                # the clause parts: polarity / 3 on the clause's adjective (its last word)
                assert [(words[i], v) for i, v in parts[:-1]] == \
                    [(adjective[p], pytest.approx(p / 3)) for p in polarities]
                assert parts[-1][0] == len(words) - 1  # penalties on the closing "."


def test_gold_clause_scores_hand_examples():
    assert gold_clause_scores("i hated the wine but the food was really great !") == [
        (3, pytest.approx(-1 / 3)), (9, pytest.approx(1 / 3)), (10, 0.0)]
    assert gold_clause_scores("the food was great great .") == [(5, -1.0)]  # malformed
    assert gold_clause_scores("") == [(0, -1.0)]
    parts = gold_clause_scores("the food was great and the food was nice .")
    assert parts[-1] == (9, pytest.approx(-1.0))  # one repeated noun, on the last token
    with pytest.raises(ValueError, match="text must be a str"):
        gold_clause_scores(None)
