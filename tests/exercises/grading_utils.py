"""Checks shared by the graded tests: type, shape, then values, with messages that name the
first wrong position and say why it should be different."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

Why = str | Callable[[tuple[int, ...]], str] | None


def _idx(idx: tuple[int, ...]) -> str:
    return ", ".join(map(str, idx))


def expect_tensor(x: Any, name: str, shape: tuple[int, ...]) -> Tensor:
    """``x`` must be a floating-point tensor of ``shape``."""
    if not isinstance(x, Tensor):
        pytest.fail(f"{name} should be a torch.Tensor of shape {shape}, got "
                    f"{type(x).__name__}: {_short(x)}", pytrace=False)
    if tuple(x.shape) != tuple(shape):
        pytest.fail(f"{name} should have shape {tuple(shape)}, got {tuple(x.shape)}",
                    pytrace=False)
    if not x.is_floating_point():
        pytest.fail(f"{name} should be a floating-point tensor, got dtype {x.dtype}",
                    pytrace=False)
    return x


def expect_scalar(x: Any, name: str) -> Tensor:
    """``x`` must be a 0-dimensional floating-point tensor (what ``.mean()`` returns)."""
    if isinstance(x, Tensor) and x.ndim != 0:
        pytest.fail(f"{name} should be a scalar tensor (shape ()), got shape {tuple(x.shape)}: "
                    "did you forget to average?", pytrace=False)
    return expect_tensor(x, name, ())


def expect_pair(x: Any, name: str, what: str) -> tuple[Any, Any]:
    if not isinstance(x, tuple | list) or len(x) != 2:
        pytest.fail(f"{name} should return a tuple {what}, got {type(x).__name__}: {_short(x)}",
                    pytrace=False)
    return x[0], x[1]


def expect_close(actual: Tensor, expected: Tensor, name: str, why: Why = None,
                 atol: float = 1e-5, rtol: float = 1e-4, backward: bool = False) -> None:
    """Values of ``actual`` must match ``expected``; the message names the first wrong entry.

    ``backward=True`` names, in the first wrong row, the wrong entry with the LARGEST last
    index instead: for quantities computed backwards in time (GAE), the latest wrong time
    step is where a mistake starts; earlier entries inherit it.
    """
    expected = expected.to(actual.dtype)
    if actual.ndim == 0:
        if not torch.allclose(actual.detach(), expected, atol=atol, rtol=rtol, equal_nan=False):
            reason = why if isinstance(why, str) else (why(()) if why else "")
            pytest.fail(f"{name} is {_num(actual)} but should be {_num(expected)}"
                        + (f": {reason}" if reason else ""), pytrace=False)
        return
    ok = torch.isclose(actual.detach(), expected, atol=atol, rtol=rtol)
    if not ok.all():
        bad = (~ok).nonzero()
        idx = tuple(bad[0].tolist())
        if backward and actual.ndim == 2:
            row = bad[bad[:, 0] == idx[0]]
            idx = tuple(row[-1].tolist())
        reason = why(idx) if callable(why) else (why or "")
        more = f" ({len(bad)} of {ok.numel()} entries are wrong)" if len(bad) > 1 else ""
        pytest.fail(f"{name}[{_idx(idx)}] is {_num(actual[idx])} but should be "
                    f"{_num(expected[idx])}" + (f": {reason}" if reason else "") + more,
                    pytrace=False)


def _short(x: Any, limit: int = 80) -> str:
    text = repr(x)
    return text if len(text) <= limit else text[:limit] + "..."


def _num(x: Tensor) -> str:
    return f"{x.item() + 0.0:.6g}"  # + 0.0 turns -0.0 into 0.0
