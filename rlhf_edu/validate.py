"""Input validation shared by the package: one place, one message form.

Bad input is refused early with a one-line ``ValueError`` that names the argument, the offending
value and what was expected, e.g. ``top_k must be a positive int or None, got 0``. Numbers:

* :func:`check_int` refuses ``bool`` (``True`` is an ``int`` in Python), ``str`` and floats,
  even integral ones (``2.0``), so a float in an integer field is caught where it is given;
* :func:`check_float` refuses ``bool``, ``str``, NaN and infinities;
* :func:`check_seed` accepts ``0 <= seed < 2**63`` (torch would silently alias ``-1`` and
  ``2**64 - 1``, and refuse larger seeds with an overflow error); a seed derived from a checked
  one (``seed + 1``) comes from :func:`derived_seed`, which wraps instead of overflowing.

Settings are dataclass fields whose metadata (:func:`meta`) holds the help text, the bounds or
choices and the command-line flag: :func:`check_fields` validates a config from it, and
:func:`parse_int` / :func:`parse_float` build the command line's readers from the same bounds
(``argument --steps: must be an integer >= 1, got '0'``).

Each number has a domain in which results are finite and mean something, written once as a
named bound here (:data:`COEF_MAX` for beta and the loss weights, :data:`TEMPERATURE`,
:data:`LR`, :data:`WHITEN_EPS`, :data:`COUNT` and :data:`EPOCHS`, ...), each with its reason,
and used by the config fields' metadata and the API functions alike: ``PPOConfig.temperature
must be in [0.01, 100], got 1e-45``. A result that can still overflow from finite inputs is
checked (:func:`check_result`) and the message names the input that made it overflow; the
tensor inputs of a function must share one device (:func:`check_same_device`, also part of
:func:`check_mask` and :func:`check_finite`); a file a command will write is checked before
any work (:func:`check_output_file`).

Tensors follow one policy for padding: a value at a masked-out position (``mask`` 0) never
changes a result or a gradient, whatever it is (NaN included), and a NaN or inf in data at a
real position (``mask`` 1) is refused, naming the argument and the index (``ppo_losses`` leaves
the forward pass it is given to the caller's loss check: NaN there is a diverged model).
:func:`check_mask` checks a mask and the finiteness of the tensors it masks with a single read
back to the host (one GPU synchronisation, however many tensors); only when something is wrong
does it look for the message. :class:`MaskCheck` makes the same checks and reads them back
together with the check of the result computed from the inputs (one read back per function).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "check_int",
    "check_float",
    "check_seed",
    "check_bool",
    "check_choice",
    "check_tensor",
    "check_floating",
    "check_same_shape",
    "check_2d",
    "check_mask",
    "MaskCheck",
    "check_finite",
    "check_path",
    "check_instance",
    "derived_seed",
    "shown",
    "meta",
    "choices_of",
    "check_field",
    "check_fields",
    "check_arguments",
    "field_kinds",
    "text_reader",
    "parse_int",
    "parse_float",
    "SEED_LIMIT",
    "SEED",
    "COEF_MAX",
    "DPO_BETA_MIN",
    "TEMPERATURE",
    "LR",
    "EPS_MAX",
    "WHITEN_EPS",
    "COUNT_MAX",
    "COUNT",
    "EPOCHS",
    "LAYERS_MAX",
    "WIDTH_MAX",
    "GRAD_NORM_MIN",
    "BINS_MAX",
    "CLIP_MIN",
    "TOKEN_ID_MAX",
    "check_same_device",
    "check_result",
    "check_output_file",
]

SEED_LIMIT = 2**63  # seeds are in [0, 2**63): what a signed 64-bit integer holds
SEED = dict(minimum=0, maximum=SEED_LIMIT - 1)
"""the bounds of a seed field: ``field(default=0, metadata=meta("...", **SEED))``"""

# ------------------------------------------------------------------ domains
# Each number a public function or a setting takes has a domain in which its result is finite
# and means something; outside it the input is refused in one line naming it. Each bound is
# written once, here (or in a field's metadata), and used by the config fields and the API
# functions alike. Results that can still overflow inside the domain are checked
# (check_result), naming the input that made them overflow.

COEF_MAX = 1e4
"""the largest coefficient of a loss or reward term (KL beta, DPO beta, vf_coef, ent_coef,
missing_eos_penalty): the terms they weigh are O(1) (z-scored reward-model scores, gold scores
in [-1, 1], KL in nats per token), beta = 10 already holds the course's policy in place, and
a weight of 1e4 leaves every other term below 1e-4 of it; beyond, the products and their
gradients overflow float32 (``rlhf-edu dpo --beta 1e30``: an inf gradient norm, which
clipping turns into updates of zero)"""
DPO_BETA_MIN = 1e-4
"""the smallest DPO / IPO beta: IPO regresses the margin to 1 / (2 beta), 5000 nats at 1e-4,
far beyond any response's log-prob (24 tokens x log 64 = 100 nats); below, that target is
out of reach (and at 1e-30 its square overflows float32), and DPO's gradient, beta / 2 per
nat, vanishes"""
TEMPERATURE = dict(minimum=0.01, maximum=100.0)
"""the sampling temperature's domain: at 0.01 the logits are multiplied by 100, so a gap of
0.2 between two logits already gives odds of e^20 (greedy decoding, which ``top_k=1`` does
exactly), and the log-prob of an unlikely token reaches -1e3 to -1e4 nats, where the PPO ratio
and the k3 KL (exp of a log-prob difference) overflow float32; at 100 the policy is uniform
to within 1 % for logit gaps up to 1, i.e. it no longer reads the model"""
LR = dict(minimum=1e-8, maximum=1.0)
"""an Adam learning rate's domain: Adam moves each weight by about lr per step, so at lr = 1
every weight (initialised at ~0.02) moves 50 times its size per step, and lr = 1e-8 is below
the float32 spacing of a weight of 0.1 (7e-9): smaller steps are rounded away and the weights
never change"""
EPS_MAX = 1.0
"""the largest stabiliser added to a variance or a std (``whiten``, ``grpo_advantages``): they
guard a division by zero, and above 1 they swamp the spread of O(1) advantages they divide"""
WHITEN_EPS = dict(minimum=1e-12, maximum=EPS_MAX)
"""whitening's ``eps`` (added to the variance): 0 turns a constant input (variance 0) into
0 / 0 = NaN; below 1e-12 it is lost to float32 rounding in a variance of O(1) (1e-7 relative)"""
COUNT_MAX = 10**8
"""the most prompts, reviews, pairs, samples or responses a function makes in memory: 1e8
short strings take ~10 GB and hours on a CPU, more than any run of this package can use
(``sample_prompts(10**30)`` would otherwise run until memory runs out)"""
COUNT = dict(minimum=1, maximum=COUNT_MAX)
"""the bounds of a count field: ``field(default=64, metadata=meta("...", **COUNT))``"""
EPOCHS = dict(minimum=1, maximum=10_000)
"""the bounds of a number of passes over data: the course's runs take 1-4; 10 000 passes over
even a single batch is hours of CPU, and beyond, a run that never ends"""
LAYERS_MAX, WIDTH_MAX = 128, 8192
"""the largest model the settings describe: 128 blocks of width 8192 is 100B parameters,
1.6 TB with Adam, beyond any machine (GPT-3 is 96 x 12288; the course's actor 3 x 128), and
far beyond what a 53-word grammar needs; a larger number only fails later, out of memory"""
GRAD_NORM_MIN = 1e-4
"""the smallest gradient-clipping threshold: Adam divides by sqrt(v) + eps (eps 1e-5 in the
trainer), so a gradient clipped below a total norm of 1e-4 (under 1e-6 per weight for the
toy models) falls under eps and the step shrinks towards nothing, silently"""
CLIP_MIN = 1e-6
"""the smallest PPO ratio clip: float32 tells 1 + eps from 1 only above 1.2e-7, so a smaller
clip rounds the clip range [1 - eps, 1 + eps] to [1, 1] and every ratio is clipped"""
BETA_FLOOR = 1e-6
"""the smallest beta the adaptive KL controller keeps: below 1e-6 the penalty is invisible
next to scores of order 1 in float32 (eps 1.2e-7), and from there the controller climbs back
to 0.05 in about 60 updates; without a floor a long run under its target rounds beta down to
0, where the multiplicative update keeps it forever"""
VF_CLIP_MAX = 1e6
"""the largest value clip: vf_clip is in the units of the values (rewards of order 1-10
here), so 1e6 is beyond any value difference (None disables clipping); torch refuses a clip
range float32 cannot hold (3.4e38)"""
BINS_MAX = 10_000
"""the most bins of a reliability diagram: 10 000 bins need millions of pairs to fill; the
course reads 5-20"""
TOKEN_ID_MAX = 2**31 - 1
"""the largest token id: GPTConfig's sizes (vocab_size included) are below 2**31"""


def _show(value: object) -> str:
    """One line for a message: a number as printed (``0.5``, ``nan``), a tensor by its shape
    and dtype, anything else as its repr (``'64'``), shortened to 80 characters."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} ({value.dtype})"
    text = str(value) if isinstance(value, numbers.Number) and not isinstance(value, bool) \
        else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= 80 else text[:77] + "..."


def shown(value: object) -> str:
    """How messages show ``value``: on one line, at most 80 characters."""
    return _show(value)


def _typed(value: object) -> str:
    return f"{_show(value)} ({type(value).__name__})"


def _int_text(n: int) -> str:
    """An integer bound as a message says it: ``10**8`` for a large power of ten."""
    if n >= 10**6 and str(n).rstrip("0") == "1":
        return f"10**{len(str(n)) - 1}"
    return str(n)


def _int_span(minimum: int | None, maximum: int | None) -> str:
    """The bounds of an integer as a message says them: ``>= 1``, ``in [0, 5]``, and a seed's
    ``in [0, 2**63)``."""
    if maximum == SEED_LIMIT - 1 and minimum is not None:
        return f"in [{minimum}, 2**63)"
    if minimum is not None and maximum is not None:
        return f"in [{minimum}, {_int_text(maximum)}]"
    if minimum is not None:
        return f">= {minimum}"
    return f"<= {_int_text(maximum)}" if maximum is not None else ""


def _int_expectation(minimum: int | None, maximum: int | None) -> str:
    if maximum == SEED_LIMIT - 1 and minimum is not None:
        return f"an int {_int_span(minimum, maximum)}"
    if minimum is not None and maximum is not None:
        return f"an int {_int_span(minimum, maximum)}"
    if minimum == 1:
        return "a positive int"
    if minimum is not None:
        return f"an int >= {minimum}"
    if maximum is not None:
        return f"an int <= {maximum}"
    return "an int"


def check_int(name: str, value: object, *, minimum: int | None = None,
              maximum: int | None = None, none_ok: bool = False) -> int | None:
    """``value`` as an ``int`` if it is an integer in ``[minimum, maximum]`` (either bound may
    be None), else ``ValueError``. ``bool``, ``str`` and floats (even ``2.0``) are refused;
    NumPy integers are accepted. ``none_ok=True`` lets None through (returned as None).

    >>> check_int("n_gpus", 2.5, minimum=1)
    Traceback (most recent call last):
    ValueError: n_gpus must be a positive int, got 2.5 (float)
    """
    if value is None and none_ok:
        return None
    expect = _int_expectation(minimum, maximum) + (" or None" if none_ok else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be {expect}, got {_typed(value)}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {expect}, got {_show(value)}")
    return int(value)


def _float_bounds(minimum: float | None, maximum: float | None, strict_min: bool,
                  strict_max: bool) -> str:
    if minimum is not None and maximum is not None:
        return (f"in {'(' if strict_min else '['}{minimum:g}, {maximum:g}"
                f"{')' if strict_max else ']'}")
    if minimum is not None:
        return f"{'>' if strict_min else '>='} {minimum:g}"
    if maximum is not None:
        return f"{'<' if strict_max else '<='} {maximum:g}"
    return ""


def check_float(name: str, value: object, *, minimum: float | None = None,
                maximum: float | None = None, strict_min: bool = False,
                strict_max: bool = False, none_ok: bool = False) -> float | None:
    """``value`` as a ``float`` if it is a finite real number within the bounds, else
    ``ValueError``. ``strict_min``/``strict_max`` exclude the bound itself (``> 0``).
    ``bool``, ``str``, NaN and inf are refused; ints, NumPy numbers and one-element real
    tensors are accepted. ``none_ok=True`` lets None through (returned as None).

    Messages: ``beta must be >= 0, got -0.1``; ``gamma must be in [0, 1], got nan``;
    ``beta must be finite, got inf``; ``clip must be a number > 0, got '0.2' (str)``.
    """
    if value is None and none_ok:
        return None
    bounds = _float_bounds(minimum, maximum, strict_min, strict_max)
    is_tensor = isinstance(value, Tensor) and value.numel() == 1 and not value.is_complex() \
        and value.dtype != torch.bool
    if not is_tensor and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        expect = f"a number{' ' + bounds if bounds else ''}" + (" or None" if none_ok else "")
        raise ValueError(f"{name} must be {expect}, got {_typed(value)}")
    x = float(value)
    text = _show(x if is_tensor else value)
    if not math.isfinite(x):
        if minimum is not None and maximum is not None:
            raise ValueError(f"{name} must be {bounds}, got {text}")
        raise ValueError(f"{name} must be finite, got {text}")
    if minimum is not None and (x < minimum or (strict_min and x == minimum)) or \
            maximum is not None and (x > maximum or (strict_max and x == maximum)):
        raise ValueError(f"{name} must be {bounds}, got {text}")
    if isinstance(value, numbers.Integral) and abs(value) > 2**53:  # torch: an int64 scalar
        raise ValueError(f"{name} must be a float, or an int within +-2**53, got {text}")
    return x


def check_seed(name: str, value: object) -> int:
    """``value`` if it is an int in ``[0, 2**63)``, else ``ValueError``."""
    return check_int(name, value, **SEED)


def derived_seed(seed: int, offset: int) -> int:
    """``seed + offset`` kept in ``[0, 2**63)``: the seed of a second generator derived from a
    checked one (``seed + 1`` for held-out data), valid even for ``seed = 2**63 - 1``."""
    return (seed + offset) % SEED_LIMIT


def check_instance(name: str, value: object, cls: type | tuple[type, ...], *,
                   none_ok: bool = False, hint: str = "") -> object:
    """``value`` if it is an instance of ``cls`` (or None with ``none_ok``), else
    ``ValueError`` naming the type it got; ``hint`` suggests where to get one."""
    if (value is None and none_ok) or isinstance(value, cls):
        return value
    names = " or ".join(c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,)))
    article = "an" if names[0] in "AEIOU" else "a"
    raise ValueError(f"{name} must be {article} {names}{f' ({hint})' if hint else ''}"
                     f"{' or None' if none_ok else ''}, got {type(value).__name__}")


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is a ``bool`` (or a NumPy bool), else ``ValueError``: a string such as
    ``"no"`` is truthy and would silently mean True."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise ValueError(f"{name} must be True or False, got {_typed(value)}")
    return bool(value)


def check_choice(name: str, value: object, choices: tuple) -> object:
    """``value`` if it is one of ``choices`` (compared with ``==`` and of the same type, so
    ``True`` is not taken for ``1``), else ``ValueError`` listing them."""
    if not any(type(value) is type(c) and value == c for c in choices):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, "
                         f"got {_show(value)}")
    return value


def check_tensor(name: str, x: object, *, ndim: int | None = None,
                 shape: str = "") -> Tensor:
    """``x`` if it is a tensor (with ``ndim`` dimensions if given; ``shape`` names them in the
    message, e.g. ``"(B, T)"``), else ``ValueError``."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor{' of shape ' + shape if shape else ''}"
                         f", got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape or f'of {ndim} dimensions'}, "
                         f"got {tuple(x.shape)}")
    return x


def check_floating(name: str, x: object) -> Tensor:
    """``x`` if it is a floating-point tensor (log-probs, values), else ``ValueError``."""
    check_tensor(name, x)
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x


def check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    """``ValueError`` unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; "
            "they must match"
        )


def check_2d(name: str, x: Tensor) -> None:
    """``ValueError`` unless ``x`` is a non-empty ``(B, T)`` tensor."""
    check_tensor(name, x)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (B, T), got {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); a batch needs at least "
                         "one row and one token")


def _fmt_index(idx: list[int]) -> str:
    """`[3]` -> "3", `[0, 3]` -> "(0, 3)" (how a learner would index the tensor)."""
    return str(idx[0]) if len(idx) == 1 else str(tuple(idx))


def _real(x: Tensor, m: Tensor | None) -> Tensor | None:
    """``m`` broadcast to ``x`` if ``x``'s leading dimensions are the mask's (``(B, T)`` or
    ``(B, T, V)`` logits under a ``(B, T)`` mask); None (every entry is real) otherwise."""
    if m is None or x.shape[:m.ndim] != m.shape:
        return None
    return m.reshape(*m.shape, *([1] * (x.ndim - m.ndim))).expand_as(x)


def _nonfinite(x: Tensor, m: Tensor | None) -> Tensor:
    bad = ~torch.isfinite(x.detach())
    real = _real(x, m)
    return bad if real is None else bad & real


def _finite_message(name: str, x: Tensor, m: Tensor | None) -> str | None:
    bad = _nonfinite(x, m).nonzero()
    if len(bad) == 0:
        return None
    idx = bad[0].tolist()
    if not idx:  # a 0-d tensor
        return f"{name} is {x.item()}; expected a finite value"
    where = " where mask is 1" if _real(x, m) is not None else ""
    return (f"{name} contains NaN or inf at index {_fmt_index(idx)} "
            f"({x[tuple(idx)].item()}); expected finite values{where}")


def _mask_message(mask: Tensor, m: Tensor, nonempty: bool, every_row: bool) -> str | None:
    if mask.dtype != torch.bool:
        bad = ((mask != 0) & (mask != 1)).nonzero()
        if len(bad) > 0:
            idx = bad[0].tolist()
            return (f"mask must contain only 0 and 1, got {mask[tuple(idx)].item()} "
                    f"at index {_fmt_index(idx)}")
    if nonempty and not m.any():
        return "mask has no unmasked entries"
    if every_row:
        empty = (~m.any(dim=-1)).nonzero()
        if len(empty) > 0:
            return f"mask row {_fmt_index(empty[0].tolist())} has no response token"
    return None


def check_mask(mask: object, like: Tensor, like_name: str, *, every_row: bool = False,
               nonempty: bool = False, finite: Mapping[str, Tensor] | None = None,
               what: str = "") -> Tensor:
    """Validate ``mask`` against ``like`` and return it as a bool tensor.

    ``mask`` is bool, or numeric holding only 0 and 1, with ``like``'s shape. ``nonempty``:
    at least one entry is 1; ``every_row``: each row of a ``(B, T)`` mask holds a 1 (GAE and
    reward placement need one per response). ``finite`` maps names to floating-point tensors
    that must be finite wherever the mask is 1 (a tensor whose leading dimensions are not the
    mask's, such as ``(B,)`` scores, must be finite everywhere). All of it costs one read back
    to the host. ``what`` ends the "no unmasked entries" message (e.g. "; the PPO losses are
    undefined"). :class:`MaskCheck` makes the same checks and reads them back together with
    the check of a result.
    """
    check = MaskCheck(mask, like, like_name, every_row=every_row, nonempty=nonempty,
                      finite=finite, what=what)
    check.raise_if_bad()
    return check.m


class MaskCheck:
    """:func:`check_mask`'s checks, queued on the device but not yet read back, so that one
    read back also checks a result computed from the inputs (:meth:`result`).

    ``m`` is the bool mask at once. Wrap the computation in ``with check:``: an error it
    raises on bad inputs (an empty row, say) gives way to the inputs' own message. Then
    ``check.result(name, x, cause)`` reads the input checks and the finiteness of ``x`` back
    in one go and raises, the inputs' message first, else :func:`check_result`'s.
    """

    def __init__(self, mask: object, like: Tensor, like_name: str, *, every_row: bool = False,
                 nonempty: bool = False, finite: Mapping[str, Tensor] | None = None,
                 what: str = "") -> None:
        check_tensor("mask", mask)
        check_same_shape("mask", mask, like_name, like)
        self.finite = dict(finite or {})
        for name, x in self.finite.items():
            check_floating(name, x)
        # a "like" on the meta device only gives the shape (kl_penalty's (B, T) of logits)
        check_same_device({**({like_name: like} if like.device.type != "meta" else {}),
                           **self.finite, "mask": mask})
        self.mask, self.nonempty, self.every_row, self.what = mask, nonempty, every_row, what
        self.m = m = mask if mask.dtype == torch.bool else mask != 0
        flags = [torch.zeros((), dtype=torch.bool, device=m.device)]
        if mask.dtype != torch.bool:
            flags.append(((mask != 0) & (mask != 1)).any())
        if nonempty:
            flags.append(~m.any())
        if every_row and m.numel():
            flags.append((~m.any(dim=-1)).any())
        flags += [_nonfinite(x, m).any().to(m.device) for x in self.finite.values()]
        self.flags = torch.stack(flags)  # any True: something is wrong

    def raise_if_bad(self, known_bad: bool = False) -> None:
        """Read the checks back (unless ``known_bad``) and raise the first message, if any."""
        if known_bad or bool(self.flags.any()):  # the one read back; the rest finds the message
            message = _mask_message(self.mask, self.m, self.nonempty, self.every_row)
            if message == "mask has no unmasked entries":
                message += self.what
            for name, x in self.finite.items():
                message = message or _finite_message(name, x, self.m)
            raise ValueError(message)

    def __enter__(self) -> Tensor:
        return self.m

    def __exit__(self, kind, error, traceback) -> bool:
        if error is not None and not isinstance(error, KeyboardInterrupt):
            try:
                self.raise_if_bad()  # bad inputs explain the error; else it propagates
            except ValueError as bad:
                raise bad from None
        return False

    def read(self, *extra: Tensor) -> list[bool]:
        """Read the input checks back together with the 0-d bool tensors ``extra`` (one read
        back for all): the inputs' ``ValueError`` if they failed, else ``extra`` as bools."""
        n = len(self.flags)
        values = torch.cat([self.flags, *(e.reshape(1).to(self.flags.device)
                                          for e in extra)]).tolist()
        if any(values[:n]):
            self.raise_if_bad(known_bad=True)
        return values[n:]

    def result(self, name: str, x: Tensor, cause: str | Callable[[], str]) -> Tensor:
        """``x`` if the inputs passed and ``x`` is all finite (one read back for both); else
        the inputs' ``ValueError``, or :func:`check_result`'s."""
        if self.read(~torch.isfinite(x.detach()).all())[0]:
            check_result(name, x, cause)
        return x


def check_finite(tensors: Mapping[str, Tensor]) -> None:
    """``ValueError`` naming the first tensor holding NaN or inf, and where (one read back)."""
    for name, x in tensors.items():
        check_floating(name, x)
    if not tensors:
        return
    check_same_device(tensors)
    device = next(iter(tensors.values())).device
    flags = torch.stack([_nonfinite(x, None).any().to(device) for x in tensors.values()])
    if bool(flags.any()):  # the one read back
        for name, x in tensors.items():
            message = _finite_message(name, x, None)
            if message:
                raise ValueError(message)


def check_same_device(tensors: Mapping[str, object]) -> None:
    """``ValueError`` unless the tensors among ``tensors`` (name -> value; others are skipped)
    are all on one device, and none on the meta device (shapes without data, nothing to
    compute): ``logprobs is on cpu but ref_logprobs is on meta; ...``. Costs no read back."""
    named = [(name, x) for name, x in tensors.items() if isinstance(x, Tensor)]
    for name, x in named[1:]:
        if x.device != named[0][1].device:
            raise ValueError(f"{named[0][0]} is on {named[0][1].device} but {name} is on "
                             f"{x.device}; all tensor inputs must be on one device (move them "
                             "with .to(device))")
    if named and named[0][1].device.type == "meta":
        raise ValueError(f"{named[0][0]} is on the meta device (a shape without data); pass "
                         "tensors with values")


def check_result(name: str, x: Tensor, cause: str | Callable[[], str]) -> Tensor:
    """``x`` if it is all finite; else ``ValueError`` naming ``name``, the first non-finite
    index and ``cause``: which input made finite inputs overflow (a function giving the text,
    if it costs work to find). One read back."""
    if bool(torch.isfinite(x.detach()).all()):
        return x
    idx = (~torch.isfinite(x.detach())).nonzero()[0].tolist()
    where = f"{x[tuple(idx)].item()} at index {_fmt_index(idx)}" if idx else f"{x.item()}"
    raise ValueError(f"{name} overflowed to {where} from finite inputs: "
                     f"{cause() if callable(cause) else cause}")


def check_output_file(name: str, path: object) -> Path:
    """``path`` as a ``Path`` if a file can be written there, else ``ValueError`` (one line),
    before any work: it is not empty, not an existing directory, its parent exists and is a
    directory, and the parent can be written (a new file is created there, then renamed over
    ``path``). Every command that trains checks its ``--out`` this way before training.
    ``name`` "" leaves the name out (argparse puts the flag before the message)."""
    text = check_path(name, path)
    must, head = (f"{name} must", f"{name}: ") if name else ("must", "")
    if not text:
        raise ValueError(f"{must} name a file to write, got ''")
    path = Path(text)
    parent = path.parent
    if path.is_dir():
        raise ValueError(f"{must} name a file to write, got {text!r} (a directory)")
    if not parent.exists():
        raise ValueError(f"{head}the folder {str(parent)!r} of {text!r} does not exist; "
                         "create it first")
    if not parent.is_dir():
        raise ValueError(f"{head}{str(parent)!r} in {text!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{head}the folder {str(parent)!r} is not writable; choose another "
                         "place for the file")
    return path


def check_path(name: str, path: object) -> str:
    """``path`` as a string if it is a ``str`` or ``os.PathLike``, else ``ValueError``."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{name} must be a path (str or os.PathLike), got {_typed(path)}")
    return os.fspath(path)


# ------------------------------------------------------------------ settings: field metadata


def meta(help: str, *, minimum: float | None = None, maximum: float | None = None,
         strict_min: bool = False, strict_max: bool = False,
         choices: tuple | Callable[[], Mapping | tuple] | None = None, flag: str | None = None,
         implies: Mapping[str, object] | None = None,
         check: Callable[[object], object] | None = None) -> dict:
    """The metadata of a settings field, its only description: ``help`` (one line), the bounds
    (``strict_*`` excludes the bound itself), ``choices`` (a tuple, or a function giving the
    current ones, e.g. the method table's names; a mapping's values describe its keys), the
    command-line ``flag`` when it is not ``--field-name``, ``implies``: other fields that
    giving this flag sets (``--kl-target`` turns ``adaptive_kl`` on), and ``check``: the check
    of the module that defines the values (``sharding.check_stage``), used instead of the
    generic one so a value is refused in that module's words wherever it is given.

    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class C:
    ...     gamma: float = field(default=1.0, metadata=meta("discount", minimum=0, maximum=1))
    """
    return dict(help=help, minimum=minimum, maximum=maximum, strict_min=strict_min,
                strict_max=strict_max, choices=choices, flag=flag, implies=dict(implies or {}),
                check=check)


def choices_of(m: Mapping) -> tuple | None:
    """The choices of a field's metadata ``m`` now (None: the field takes any value)."""
    choices = m.get("choices")
    if callable(choices):
        choices = choices()
    return tuple(choices) if choices is not None else None


def field_kinds(f: dataclasses.Field) -> list[str]:
    """``["float", "None"]`` for a field annotated ``float | None`` (a string or a type)."""
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return [t.strip() for t in text.split("|")]


def check_field(owner: str, f: dataclasses.Field, value: object) -> None:
    """``ValueError`` unless ``value`` fits field ``f`` of class ``owner``: its type (``int``,
    ``float``, ``bool``, ``str``, or a union such as ``str | dict``), and its metadata's bounds
    or choices. The message names ``owner.field``: ``PPOConfig.gamma must be in [0, 1], got 2``
    (or the field alone if ``owner`` is empty: a function's argument of the same meaning).
    """
    name, m, kinds = f"{owner}.{f.name}" if owner else f.name, f.metadata, field_kinds(f)
    none_ok = "None" in kinds
    if value is None and none_ok:
        return
    choices = choices_of(m)
    bounds = {k: m.get(k) for k in ("minimum", "maximum")}
    if m.get("check") is not None:
        m["check"](value)
    elif choices is not None:
        check_choice(name, value, choices)
    elif kinds[0] == "bool":
        check_bool(name, value)
    elif kinds[0] == "int":
        check_int(name, value, **bounds, none_ok=none_ok)
    elif kinds[0] == "float":
        check_float(name, value, **bounds, strict_min=m.get("strict_min", False),
                    strict_max=m.get("strict_max", False), none_ok=none_ok)
    else:
        classes = {"str": str, "dict": dict, "list": list}
        check_instance(name, value, tuple(classes[k] for k in kinds if k in classes),
                       none_ok=none_ok)


def check_fields(config: object) -> None:
    """:func:`check_field` for every field of the dataclass instance ``config``, in order."""
    owner = type(config).__name__
    for f in dataclasses.fields(config):
        check_field(owner, f, getattr(config, f.name))


def check_arguments(cls: type, **values: object) -> None:
    """Check a function's arguments against the fields of the same names of the settings
    dataclass ``cls``: the bounds are the fields', the messages name the arguments
    (``lr must be > 0, got 0.0``)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in values.items():
        check_field("", fields[name], value)


def parse_int(minimum: int | None = None, maximum: int | None = None
              ) -> Callable[[str], int]:
    """A reader of command-line text: an integer in ``[minimum, maximum]``, else
    ``ValueError("must be an integer >= 1, got '0'")`` (argparse names the flag)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or (minimum is not None and value < minimum) or \
                (maximum is not None and value > maximum):
            span = _int_span(minimum, maximum)
            raise ValueError(f"must be an integer{' ' + span if span else ''}, got {text!r}")
        return value
    parse.__name__ = "integer"
    return parse


def parse_float(minimum: float | None = None, maximum: float | None = None,
                strict_min: bool = False, strict_max: bool = False) -> Callable[[str], float]:
    """A reader of command-line text: a finite number within the bounds, else
    ``ValueError("must be a finite number > 0, got 'nan'")``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or \
                minimum is not None and (value < minimum or strict_min and value == minimum) or \
                maximum is not None and (value > maximum or strict_max and value == maximum):
            span = _float_bounds(minimum, maximum, strict_min, strict_max)
            raise ValueError(f"must be a finite number{' ' + span if span else ''}, "
                             f"got {text!r}")
        return value
    parse.__name__ = "number"
    return parse


def text_reader(f: dataclasses.Field) -> Callable[[str], object] | None:
    """The reader of field ``f``'s command-line text: :func:`parse_int` or :func:`parse_float`
    with the bounds of its metadata; None for a field read as text (a string, a choice)."""
    m, kind = f.metadata, field_kinds(f)[0]
    bounds = {k: m.get(k) for k in ("minimum", "maximum")}
    if kind == "int":
        return parse_int(**bounds)
    if kind == "float":
        return parse_float(**bounds, strict_min=m.get("strict_min", False),
                           strict_max=m.get("strict_max", False))
    return None
