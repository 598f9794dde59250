import random

import pytest

from rlhf_edu.task import (
    PROMPTS,
    VOCAB,
    Tokenizer,
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
