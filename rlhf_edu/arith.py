"""The second toy task: adding two three-digit numbers, with an exact verifier.

A prompt is a problem written digit by digit, ``3 7 2 + 4 8 9 =``; a response answers it in
one of two ways the SFT data shows:

* **direct**: the sum at once, ``8 6 1``;
* **worked**: the column sums from the units up, each as two digits (its carry and its digit),
  then ``=`` and the sum: ``1 1 , 1 6 , 0 8 = 8 6 1`` (2 + 9 = 11, 7 + 8 + 1 = 16,
  3 + 4 + 1 = 08).

The SFT data makes the two forms unequal on purpose: its direct answers are wrong far more often
than its worked ones, and a worked answer writes each column's result down before the sum, so
the SFT actor's worked answers are right far more often than its direct ones (notebook 10
measures both). It also holds hedges (``... = 8 6 1 or 8 7 1``: two candidates, one of them
right), so the SFT actor is competent but unreliable.

Two verifiers score a response: :func:`verify` (strict: exactly one answer, in one of the two
forms, and it is the sum) and :func:`verify_lax` (the sum's digits appear somewhere in the
response), which a hedging policy can fool. Everything is a pure function of its inputs and a
seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .task import BOS, EOS, PAD
from .validate import COUNT_MAX, check_int, check_seed, shown

DIGITS = tuple(str(d) for d in range(10))
VOCAB: tuple[str, ...] = (PAD, BOS, EOS, *DIGITS, "+", "=", ",", "or")
LOW, HIGH = 100, 999  # both operands have three digits
N_HELDOUT = 200
HELDOUT_SEED = 20_251_202
WORKED_SHARE = 0.25  # SFT answers that write the columns out; the rest answer directly
WORKED_WRONG = 0.15  # worked answers whose sum has one digit off (the columns are right)
DIRECT_WRONG = 0.6  # direct answers whose sum has one digit off
HEDGE_SHARE = 0.1  # answers that end in a second candidate ("or ..."), one of the two right


@dataclass(frozen=True)
class Answer:
    """A parsed response: its form ("direct", "worked" or "hedge") and the number(s) given."""

    form: str
    numbers: tuple[int, ...]


def digits(n: int) -> str:
    """``372`` as ``"3 7 2"``: one token per digit."""
    return " ".join(str(n))


def problem_text(a: int, b: int) -> str:
    """The prompt of ``a + b``: ``"3 7 2 + 4 8 9 ="``."""
    return f"{digits(a)} + {digits(b)} ="


def worked(a: int, b: int) -> str:
    """The worked response to ``a + b``: the column sums from the units up, then the sum."""
    columns, carry = [], 0
    for i in range(3):
        s = (a // 10**i) % 10 + (b // 10**i) % 10 + carry
        columns.append(f"{s // 10} {s % 10}")
        carry = s // 10
    return " , ".join(columns) + f" = {digits(a + b)}"


def _off_by_one_digit(n: int, rng: random.Random) -> int:
    """``n`` with one of its digits changed (the kind of slip a carry causes)."""
    s = list(str(n))
    i = rng.randrange(len(s))
    choices = [d for d in DIGITS if d != s[i] and not (i == 0 and d == "0")]
    s[i] = rng.choice(choices)
    return int("".join(s))


def sft_answer(a: int, b: int, rng: random.Random) -> str:
    """One SFT response to ``a + b``: worked or direct, sometimes one digit off, sometimes a
    hedge (the sum and a one-digit-off candidate, in either order)."""
    total = a + b
    is_worked = rng.random() < WORKED_SHARE
    if rng.random() < HEDGE_SHARE:
        pair = [total, _off_by_one_digit(total, rng)]
        rng.shuffle(pair)
        given = f"{digits(pair[0])} or {digits(pair[1])}"
    else:
        wrong = rng.random() < (WORKED_WRONG if is_worked else DIRECT_WRONG)
        given = digits(_off_by_one_digit(total, rng) if wrong else total)
    if is_worked:
        return worked(a, b).rsplit(" = ", 1)[0] + f" = {given}"
    return given


def _problem(rng: random.Random) -> tuple[int, int]:
    return rng.randint(LOW, HIGH), rng.randint(LOW, HIGH)


def heldout_problems(n: int = N_HELDOUT) -> list[tuple[int, int]]:
    """The ``n`` held-out problems (first ``n`` of a fixed list): never trained on, by SFT or RL."""
    check_int("n", n, minimum=1, maximum=N_HELDOUT)
    rng, seen, out = random.Random(HELDOUT_SEED), set(), []
    while len(out) < N_HELDOUT:
        p = _problem(rng)
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out[:n]


_HELDOUT = frozenset(heldout_problems())


def training_problem(rng: random.Random) -> tuple[int, int]:
    """A random problem that is not held out."""
    while True:
        p = _problem(rng)
        if p not in _HELDOUT:
            return p


def sample_corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` SFT texts, problem and answer: ``"3 7 2 + 4 8 9 = 8 6 1"``."""
    check_int("n", n, minimum=0, maximum=COUNT_MAX)
    check_seed("seed", seed)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = training_problem(rng)
        out.append(f"{problem_text(a, b)} {sft_answer(a, b, rng)}")
    return out


def sample_prompts(n: int, generator: torch.Generator | None = None) -> list[str]:
    """``n`` training problems as prompts, drawn with ``generator``."""
    check_int("n", n, minimum=0, maximum=COUNT_MAX)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got "
                         f"{type(generator).__name__}")
    seed = int(torch.randint(2**62, (1,), generator=generator))
    rng = random.Random(seed)
    return [problem_text(*training_problem(rng)) for _ in range(n)]


# ---------------------------------------------------------------- reading an answer

def _number(words: list[str]) -> int | None:
    if not 1 <= len(words) <= 4 or not all(w in DIGITS for w in words):
        return None
    if len(words) > 1 and words[0] == "0":
        return None
    return int("".join(words))


def split(text: str) -> tuple[int, int, list[str]] | None:
    """``"3 7 2 + 4 8 9 = 8 6 1"`` as ``(372, 489, ["8", "6", "1"])``, or None."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__} {shown(text)}")
    words = text.split()
    if len(words) < 8 or words[3] != "+" or words[7] != "=":
        return None
    a, b = _number(words[:3]), _number(words[4:7])
    if a is None or b is None:
        return None
    return a, b, words[8:]


def _final(words: list[str]) -> tuple[str, tuple[int, ...]] | None:
    """The final answer of a response: one number, or a hedge ``X or Y`` of two."""
    if "or" in words:
        i = words.index("or")
        pair = (_number(words[:i]), _number(words[i + 1:]))
        return ("hedge", pair) if None not in pair else None
    n = _number(words)
    return ("one", (n,)) if n is not None else None


def parse_answer(response: list[str] | str) -> Answer | None:
    """The :class:`Answer` a response gives, or None if it follows neither form. A hedge
    (``X or Y`` at the end of either form) has the form "hedge" and both numbers."""
    words = response.split() if isinstance(response, str) else list(response)
    head = []
    if "=" in words:
        i = words.index("=")
        head, words = words[:i], words[i + 1:]
        ok = len(head) == 8 and head[2] == head[5] == "," and all(
            w in DIGITS for k, w in enumerate(head) if k not in (2, 5))
        if not ok:
            return None
    final = _final(words)
    if final is None:
        return None
    kind, numbers = final
    return Answer("hedge" if kind == "hedge" else "worked" if head else "direct", numbers)


def verify(text: str) -> float:
    """The strict verifier: 1.0 if the response gives exactly one answer, direct or worked,
    and it is the sum; else 0.0."""
    parts = split(text)
    if parts is None:
        return 0.0
    a, b, response = parts
    answer = parse_answer(response)
    ok = answer is not None and answer.form != "hedge" and answer.numbers == (a + b,)
    return float(ok)


def verify_lax(text: str) -> float:
    """The lax verifier: 1.0 if the sum's digits appear, in a row, anywhere in the response."""
    parts = split(text)
    if parts is None:
        return 0.0
    a, b, response = parts
    target = list(str(a + b))
    n = len(target)
    return float(any(response[i:i + n] == target for i in range(len(response) - n + 1)))


def form(text: str) -> str | None:
    """The form of a problem + response text's answer: "direct", "worked", "hedge" or None."""
    parts = split(text)
    answer = parse_answer(parts[2]) if parts is not None else None
    return answer.form if answer is not None else None


def text_metrics(texts: list[str]) -> dict[str, float]:
    """Means over ``texts`` (problem and response): ``gold_score`` (the strict verifier:
    pass@1), ``lax_score``, ``well_formed`` (one of the forms), and the shares ``worked`` and
    ``hedged`` of responses in those forms."""
    n = len(texts)
    if n == 0:
        raise ValueError("texts is empty; the metrics are means over at least one text")
    forms = [form(t) for t in texts]
    return {"gold_score": sum(map(verify, texts)) / n,
            "lax_score": sum(map(verify_lax, texts)) / n,
            "well_formed": sum(f is not None for f in forms) / n,
            "worked": forms.count("worked") / n,
            "hedged": forms.count("hedge") / n}
