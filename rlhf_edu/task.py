"""The toy task: short restaurant reviews from a small grammar, and the hidden "human" judge.

A review is one to three clauses joined by "and"/"but" and closed by "." or "!":

    review := clause (("and" | "but") clause){0,2} ("." | "!")
    clause := "the" NOUN "was" [ADVERB] ADJECTIVE  |  "i" VERB "the" NOUN

for example ``the food was really great and the service was slow .``. The corpus sampler never
repeats a noun, verb or adjective inside one review; the parser accepts repeats, and the gold
score punishes them. Everything here is a pure function of its inputs and a seed, so tests and
plots can call it freely.

The **gold score** plays the human labeller. It is the sentiment of a well-formed review
(positive minus negative clauses, divided by the three clauses a review may have, so in [-1, 1])
minus 1 per repeated content word, floored at -1; a text the grammar cannot parse scores -1.
More praise is better, but only inside the grammar. The reward model never sees this function,
only noisy preference labels drawn from it, which is what leaves room for reward hacking.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass

import torch

from .validate import COUNT_MAX, check_bool, check_int, check_seed, check_tensor, shown

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
NOUNS = ("food", "service", "staff", "place", "music", "price", "wine", "pasta", "room", "view",
         "dessert", "coffee")
ADVERBS = ("really", "very", "quite", "so")
POSITIVE = ("great", "amazing", "delicious", "friendly", "fresh", "lovely", "excellent", "perfect",
            "good", "nice")
NEGATIVE = ("awful", "slow", "rude", "bland", "cold", "terrible", "bad", "dirty", "noisy", "stale")
NEUTRAL = ("okay", "fine", "average")
VERBS_POS = ("loved", "liked")
VERBS_NEG = ("hated", "disliked")
FUNCTION_WORDS = ("the", "was", "i", "and", "but", ".", "!")

VOCAB: tuple[str, ...] = (PAD, BOS, EOS, *FUNCTION_WORDS, *NOUNS, *ADVERBS, *POSITIVE, *NEGATIVE,
                          *NEUTRAL, *VERBS_POS, *VERBS_NEG)
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2

POLARITY: dict[str, int] = {
    **{w: 1 for w in POSITIVE + VERBS_POS},
    **{w: -1 for w in NEGATIVE + VERBS_NEG},
    **{w: 0 for w in NEUTRAL},
}
ADJECTIVES = POSITIVE + NEGATIVE + NEUTRAL
VERBS = VERBS_POS + VERBS_NEG
CONTENT_WORDS = frozenset(NOUNS + ADJECTIVES + VERBS)
MAX_CLAUSES = 3
REPEAT_PENALTY = 1.0  # gold-score cost of each repeated content word

# Prompts are review openings of two or three words, so a batch mixes lengths (padding matters).
PROMPTS: tuple[str, ...] = (
    *(f"the {n}" for n in NOUNS),
    *(f"the {n} was" for n in NOUNS[:6]),
    *(f"i {v} the" for v in VERBS),
)


class Tokenizer:
    """Word-level tokenizer over :data:`VOCAB` (one id per whitespace-separated word)."""

    def __init__(self, vocab: tuple[str, ...] = VOCAB):
        if isinstance(vocab, str) or not all(isinstance(w, str) for w in vocab):
            raise ValueError(f"vocab must be a sequence of words (str), got {shown(vocab)}")
        missing = [w for w in (PAD, BOS, EOS) if w not in vocab]
        if missing:
            raise ValueError(f"vocab must contain {PAD}, {BOS} and {EOS}; missing {missing}")
        repeated = sorted(w for w, c in Counter(vocab).items() if c > 1)
        if repeated:
            raise ValueError(f"vocab must not repeat a word, got {repeated} more than once")
        self.vocab = tuple(vocab)
        self.stoi = {w: i for i, w in enumerate(self.vocab)}
        self.pad_id, self.bos_id, self.eos_id = self.stoi[PAD], self.stoi[BOS], self.stoi[EOS]

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Words of ``text`` to ids; raises ``ValueError`` naming the first unknown word, or a
        special token (``<pad>``, ``<bos>``, ``<eos>``) typed into the text: ``bos``/``eos``
        add those, and a typed ``<pad>`` would become a masked hole in the sequence."""
        return self._encode("text", text, bos, eos)

    def _encode(self, name: str, text: str, bos: bool, eos: bool) -> list[int]:
        """:meth:`encode`, its messages naming the text ``name`` (``texts[3]``)."""
        _check_text(name, text)
        check_bool("bos", bos)
        check_bool("eos", eos)
        specials = (self.pad_id, self.bos_id, self.eos_id)
        ids = []
        for i, word in enumerate(text.split()):
            if word not in self.stoi:
                raise ValueError(f"unknown word {word!r} at position {i} of {text!r}; the "
                                 f"vocabulary has {len(self.vocab)} words (rlhf_edu.task.VOCAB)")
            if self.stoi[word] in specials:
                raise ValueError(f"{name} contains the special token {word!r} at position {i} "
                                 f"of {shown(text)}; special tokens are not text: bos=True and "
                                 "eos=True add <bos> and <eos>, and padding is added by batching")
            ids.append(self.stoi[word])
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Ids ``(T,)`` to text: drops ``<pad>``/``<bos>`` and stops at the first ``<eos>``."""
        if isinstance(ids, torch.Tensor):
            check_tensor("ids", ids, ndim=1, shape="(T,)")
            if ids.is_floating_point() or ids.is_complex():
                raise ValueError(f"ids must hold integer token ids, got {ids.dtype}")
            ids = ids.tolist()
        elif not isinstance(ids, (list, tuple)):
            raise ValueError(f"ids must be a list or 1-D tensor of token ids, got "
                             f"{type(ids).__name__} {shown(ids)}")
        for k, i in enumerate(ids):
            check_int(f"ids[{k}]", i, minimum=0)
        words = []
        for i in ids:
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):  # ids past the vocabulary: untrained models
                words.append(self.vocab[i] if i < len(self.vocab) else f"<unused-{i}>")
        return " ".join(words)

    def encode_batch(self, texts: list[str], bos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``(B, P)`` ids and the ``(B, P)`` bool mask of real tokens."""
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise ValueError(f"texts must be a list of strings, got {type(texts).__name__} "
                             f"{shown(texts)}")
        if not texts:
            raise ValueError("texts is empty; expected at least one text")
        for b, t in enumerate(texts):
            _check_text(f"texts[{b}]", t)
        rows = [self._encode(f"texts[{b}]", t, bos, False) for b, t in enumerate(texts)]
        width = max(len(r) for r in rows)
        if width == 0:
            raise ValueError("every text is empty and bos=False: there is no token to encode")
        ids = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rows])  # one copy
        return ids, ids != self.pad_id


def _check_text(name: str, text: object) -> None:
    if not isinstance(text, str):
        raise ValueError(f"{name} must be a str, got {type(text).__name__} {shown(text)}")


# ---------------------------------------------------------------- sampling the corpus

def _clause(rng: random.Random, nouns: list[str], adjectives: list[str], verbs: list[str],
            polarity: int) -> str:
    noun = nouns.pop()
    verb = next((v for v in verbs if POLARITY[v] == polarity and polarity), None)
    if verb is not None and rng.random() < 0.2:
        verbs.remove(verb)
        return f"i {verb} the {noun}"
    adj = next(a for a in adjectives if POLARITY[a] == polarity)
    adjectives.remove(adj)
    adverb = f"{rng.choice(ADVERBS)} " if rng.random() < 0.3 and polarity else ""
    return f"the {noun} was {adverb}{adj}"


def sample_review(rng: random.Random) -> str:
    """One well-formed review with no repeated content word, e.g. ``the wine was cold .``."""
    n_clauses = rng.choices((1, 2, 3), weights=(0.3, 0.45, 0.25))[0]
    nouns = rng.sample(NOUNS, len(NOUNS))
    adjectives = rng.sample(ADJECTIVES, len(ADJECTIVES))
    verbs = rng.sample(VERBS, len(VERBS))
    mood = rng.choice((1, -1, 0))  # an overall leaning, as real reviews have one
    parts, previous = [], None
    for _ in range(n_clauses):
        polarity = mood if rng.random() < 0.6 else rng.choice((1, -1, 0))
        if polarity == 0 and not any(POLARITY[a] == 0 for a in adjectives):
            polarity = mood or 1
        if previous is not None:
            parts.append("but" if polarity != previous else "and")
        parts.append(_clause(rng, nouns, adjectives, verbs, polarity))
        previous = polarity
    end = "!" if rng.random() < 0.2 and mood else "."
    return " ".join(parts) + f" {end}"


def sample_corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` reviews from the grammar, reproducible from ``seed``."""
    check_int("n", n, minimum=0, maximum=COUNT_MAX)
    check_seed("seed", seed)
    rng = random.Random(seed)
    return [sample_review(rng) for _ in range(n)]


def sample_prompts(n: int, generator: torch.Generator | None = None) -> list[str]:
    """``n`` prompts drawn uniformly (with replacement) from :data:`PROMPTS`."""
    check_int("n", n, minimum=0, maximum=COUNT_MAX)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got "
                         f"{type(generator).__name__}")
    idx = torch.randint(len(PROMPTS), (n,), generator=generator)
    return [PROMPTS[i] for i in idx.tolist()]


# ---------------------------------------------------------------- parsing and the gold score

@dataclass(frozen=True)
class Review:
    """A parsed review: the polarity of each clause and the content words used."""

    polarities: tuple[int, ...]
    content_words: tuple[str, ...]

    @property
    def sentiment(self) -> float:
        """Positive minus negative clauses, over the most clauses a review may have: [-1, 1]."""
        return sum(self.polarities) / MAX_CLAUSES

    @property
    def repeats(self) -> int:
        return sum(c - 1 for c in Counter(self.content_words).values())


def _parse_clause(words: list[str], i: int) -> tuple[int, list[str], int] | None:
    """Parse one clause at ``words[i:]``: (polarity, content words, next index) or None."""
    w = words[i:i + 5] + [""] * 5  # padded look-ahead, so indexing never runs off the end
    if w[0] == "the" and w[1] in NOUNS and w[2] == "was":
        j = 4 if w[3] in ADVERBS else 3
        if w[j] in ADJECTIVES:
            return POLARITY[w[j]], [w[1], w[j]], i + j + 1
    if w[0] == "i" and w[1] in VERBS and w[2] == "the" and w[3] in NOUNS:
        return POLARITY[w[1]], [w[1], w[3]], i + 4
    return None


def parse(text: str) -> Review | None:
    """The :class:`Review` if ``text`` is a well-formed review, else ``None``."""
    _check_text("text", text)
    words = text.split()
    if len(words) < 2 or words[-1] not in (".", "!"):
        return None
    words = words[:-1]
    polarities, content, i = [], [], 0
    while True:
        clause = _parse_clause(words, i)
        if clause is None:
            return None
        polarity, used, i = clause
        polarities.append(polarity)
        content += used
        if i == len(words):
            break
        if words[i] not in ("and", "but") or len(polarities) == MAX_CLAUSES:
            return None
        i += 1
    return Review(tuple(polarities), tuple(content))


def is_well_formed(text: str) -> bool:
    """True if the grammar parses ``text`` (repeats allowed; see :func:`gold_score`)."""
    return parse(text) is not None


def repetition(text: str) -> int:
    """How many content words (nouns, adjectives, verbs) occur more often than once."""
    _check_text("text", text)
    counts = Counter(w for w in text.split() if w in CONTENT_WORDS)
    return sum(c - 1 for c in counts.values())


def gold_score(text: str) -> float:
    """The hidden human judgement in [-1, 1]: sentiment, minus 1 per repeat; -1 if malformed."""
    review = parse(text)
    if review is None:
        return -1.0
    return max(-1.0, review.sentiment - REPEAT_PENALTY * review.repeats)


def review_texts(prompts: list[str], response: torch.Tensor,
                 tok: Tokenizer | None = None) -> list[str]:
    """Each prompt followed by its decoded response ``(B, T)``: the review the judge reads
    (``B`` prompts, one per row; a prompt answered G times appears G times)."""
    tok = tok or Tokenizer()
    return [f"{p} {tok.decode(r)}" for p, r in zip(prompts, response.cpu())]


def text_metrics(texts: list[str]) -> dict[str, float]:
    """What the texts say about a policy, each a mean over ``texts``: ``gold_score`` (the
    hidden judge), ``well_formed`` (share the grammar parses) and ``repetition`` (share that
    repeat a content word). Every report (PPO steps, DPO, best-of-n, SFT) uses these."""
    n = len(texts)
    if n == 0:
        raise ValueError("texts is empty; the metrics are means over at least one text")
    return {"gold_score": sum(map(gold_score, texts)) / n,
            "well_formed": sum(map(is_well_formed, texts)) / n,
            "repetition": sum(repetition(t) > 0 for t in texts) / n}


def _clause_ends(words: list[str]) -> list[int]:
    """Index of the last word of each clause of a review that :func:`parse` accepts."""
    ends, i = [], 0
    while True:
        _polarity, _used, i = _parse_clause(words, i)
        ends.append(i - 1)
        if i == len(words) - 1:  # only the closing "." or "!" is left
            return ends
        i += 1  # the "and" / "but"


def gold_clause_scores(text: str) -> list[tuple[int, float]]:
    """:func:`gold_score` split into the parts each word earned: ``(word index, part)`` pairs,
    word indices into ``text.split()``, in order.

    A well-formed review gives one pair per clause, its polarity / 3 on the clause's last word
    (``the food was great`` earns +1/3 on ``great``; ``i hated the wine`` -1/3 on ``wine``),
    then one pair on the closing ``.``/``!``: the repeat penalty, with the floor at -1, which is
    0.0 when no content word repeats. A text the grammar does not parse earns its -1 on its last
    word (on index 0 for an empty text: where a response's ``<eos>`` would stand). Summed left to
    right, the parts give ``gold_score(text)`` exactly (the last part is the remainder).
    """
    review = parse(text)
    words = text.split()
    if review is None:
        return [(max(len(words) - 1, 0), -1.0)]
    parts = [(end, p / MAX_CLAUSES) for end, p in zip(_clause_ends(words), review.polarities)]
    return parts + [(len(words) - 1, _remainder(sum(v for _, v in parts), gold_score(text)))]


def _remainder(earned: float, total: float) -> float:
    """The float ``c`` nearest to ``total - earned`` for which ``earned + c == total`` in float
    arithmetic (``total - earned`` itself can miss by one rounding, e.g. 2/3 then -1)."""
    candidates = [total - earned]  # then its float neighbours, nearest first
    below = above = candidates[0]
    for _ in range(8):  # one step suffices for sums of thirds and whole penalties
        below, above = math.nextafter(below, -math.inf), math.nextafter(above, math.inf)
        candidates += [below, above]
    for c in candidates:
        if earned + c == total:
            return c
    raise ArithmeticError(f"no float c with {earned!r} + c == {total!r}")
