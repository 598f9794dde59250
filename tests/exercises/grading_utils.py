"""Checks shared by the graded tests: type, shape, then values, with messages that name the
first wrong position and say why it should be different.

The same module keeps a learner's code to itself; ``conftest.py`` applies it around every call
of an exercise function, and the checks below apply :func:`plain` to what they are given:

* :func:`pristine_call` copies a call's arguments first, so a function that writes into its
  inputs changes only its own copies and expected values come from the originals;
* :class:`learner_code` undoes, when the learner's code returns or raises, what it may have
  changed in this process: attributes and function code of torch, math, builtins, pytest, the
  package and these test modules (``torch.allclose = ...``), torch's grad mode, default dtype
  and device, torch-function and dispatch modes, the working directory, tracing, the
  recursion limit and the per-test alarm; :func:`isolated_test` does the same (and restores
  the random state) around a whole test;
* :func:`plain` reads a result by paths the result's own methods cannot intercept: tensor
  subclasses become ``torch.Tensor`` (``__torch_function__`` disabled), subclasses of int,
  float, str, tuple, list and dict become those types, and any other object becomes a
  stand-in with the same type name and repr that equals nothing.

The comparisons use torch's functions as they were when this module was imported, which is
before any learner code.
"""

from __future__ import annotations

import contextlib
import copy
import operator
import os
import random
import signal
import sys
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import Tensor

Why = str | Callable[[tuple[int, ...]], str] | None

# ------------------------------------------------------------------ real functions, kept now
_isclose, _allclose = torch.isclose, torch.allclose
_C = torch._C
_AS_SUBCLASS = _C.TensorBase.as_subclass
_NO_SUBCLASS_TORCH_FUNCTION = _C.DisableTorchFunctionSubclass
_TYPE_NAME = type.__dict__["__name__"]
_INT, _FLOAT, _STR = int.__index__, float.__float__, str.__str__
_TUPLE_LEN, _TUPLE_GET = tuple.__len__, tuple.__getitem__
_LIST_LEN, _LIST_GET = list.__len__, list.__getitem__
_DICT_ITEMS = dict.items
_set_grad_enabled, _set_default_dtype = _C._set_grad_enabled, torch.set_default_dtype
_set_num_threads, _set_anomaly = torch.set_num_threads, torch.set_anomaly_enabled
_use_deterministic = torch.use_deterministic_algorithms
_set_matmul_precision = torch.set_float32_matmul_precision
_IMMUTABLE_TYPE = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: builtin types nobody can patch
_HERE = os.path.dirname(os.path.abspath(__file__))
_MISSING = object()
# Modules whose attributes the graded tests rely on; the package's modules and the modules in
# this folder (the harness, these helpers, the graded tests) are protected too.
_PROTECTED = frozenset({
    "builtins", "math", "cmath", "operator", "functools", "itertools", "copy", "contextlib",
    "json", "numbers", "random", "torch", "torch._tensor", "torch.functional", "torch.nn",
    "torch.nn.functional", "torch.nn.modules.module", "torch.autograd", "torch.linalg",
    "torch.special", "torch.overrides", "torch.testing", "torch.optim", "torch.optim.optimizer",
    "torch.optim.sgd", "pytest", "_pytest.outcomes", "_pytest.python_api", "pytest_timeout"})


_EXTRA: list[types.ModuleType] = []  # see protect()


def protect(module: types.ModuleType) -> None:
    """Protect ``module`` too (the harness calls it for itself: pytest may drop a conftest
    from sys.modules when it imports another one)."""
    if module not in _EXTRA:
        _EXTRA.append(module)


def _protected_modules() -> list[types.ModuleType]:
    found = list(_EXTRA)
    for name, module in list(sys.modules.items()):
        if not isinstance(module, types.ModuleType) or module in found:
            continue
        if name in _PROTECTED or name == "rlhf_edu" or name.startswith("rlhf_edu."):
            found.append(module)
            continue
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and os.path.dirname(os.path.abspath(file)) == _HERE:
            found.append(module)
    return found


class _Namespaces:
    """The attributes of the protected modules and of the classes defined in them, and the
    code of their Python functions, as they are now; :meth:`restore` puts them back."""

    def __init__(self) -> None:
        # (module or class, its dict, is class, its keys, its values): the last two for a fast
        # check that nothing changed, which is what almost every call finds
        self.spaces: list[tuple[Any, dict, bool, tuple, tuple]] = []
        self.functions: list[tuple[types.FunctionType, Any, Any, Any]] = []
        self.function_parts: list | None = None
        self.seen: set[int] = set()
        self.looked_at = (0, 0)
        self.extend()

    def extend(self) -> _Namespaces:
        """Add the protected modules imported since the last look (as they are now)."""
        if self.looked_at == (len(sys.modules), len(_EXTRA)):
            return self
        self.looked_at = (len(sys.modules), len(_EXTRA))
        for module in _protected_modules():
            if id(module) in self.seen:
                continue
            self._add(module, False)
            for value in list(vars(module).values()):
                if (isinstance(value, type) and id(value) not in self.seen
                        and not value.__flags__ & _IMMUTABLE_TYPE
                        and getattr(value, "__module__", None) == module.__name__):
                    self._add(value, True)
        self.function_parts = None
        return self

    def _add(self, owner: Any, is_class: bool) -> None:
        self.seen.add(id(owner))
        saved = dict(vars(owner))
        self.spaces.append((owner, saved, is_class, tuple(saved), tuple(saved.values())))
        for value in saved.values():
            fn = value.__func__ if isinstance(value, staticmethod | classmethod) else value
            if isinstance(fn, types.FunctionType):
                self.functions.append((fn, fn.__code__, fn.__defaults__, fn.__kwdefaults__))

    def restore(self) -> None:
        for i, (owner, saved, is_class, keys, values) in enumerate(self.spaces):
            current = vars(owner)
            if (len(current) == len(keys) and all(map(operator.is_, current, keys))
                    and all(map(operator.is_, current.values(), values))):
                continue
            changed = [k for k, v in saved.items() if current.get(k, _MISSING) is not v]
            added = [k for k in current if k not in saved]
            for key in changed:
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(owner, key, saved[key])
            if is_class:  # a class must not gain an attribute that hides an inherited one
                for key in added:  # (torch.Tensor.__eq__ = ...)
                    with contextlib.suppress(AttributeError, TypeError):
                        delattr(owner, key)
            elif added:  # a module may gain attributes (a submodule imported): keep them
                saved.update((k, current[k]) for k in added)
                self.spaces[i] = (owner, saved, is_class, tuple(saved), tuple(saved.values()))
        if self.function_parts is None:
            functions = self.functions
            self.function_parts = [(attr, operator.attrgetter(attr), [f[0] for f in functions],
                                    [f[i] for f in functions])
                                   for i, attr in enumerate(_FUNCTION_PARTS, start=1)]
        for attr, get, fns, saved_parts in self.function_parts:
            if all(map(operator.is_, map(get, fns), saved_parts)):
                continue
            for fn, part in zip(fns, saved_parts):
                if getattr(fn, attr) is not part:
                    setattr(fn, attr, part)


_FUNCTION_PARTS = ("__code__", "__defaults__", "__kwdefaults__")
_TESTS: list[_Namespaces] = []  # the running test's snapshot (see isolated_test)
_PROCESS: list[_Namespaces] = []  # one snapshot for all the graded tests of this process
_HAS_ALARM = hasattr(signal, "SIGALRM") and hasattr(signal, "setitimer")


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:
        return None


def _device_context() -> Any:
    return getattr(getattr(torch, "_GLOBAL_DEVICE_CONTEXT", None), "device_context", None)


class _GlobalState:
    """Process-wide settings learner code can change, as they are now."""

    def __init__(self) -> None:
        self.trace, self.profile = sys.gettrace(), sys.getprofile()
        self.recursion = sys.getrecursionlimit()
        self.function_modes = _C._len_torch_function_stack()
        self.dispatch_modes = _C._len_torch_dispatch_stack()
        self.device_context = _device_context()
        self.grad = torch.is_grad_enabled()
        self.dtype = torch.get_default_dtype()
        self.threads = torch.get_num_threads()
        self.anomaly = torch.is_anomaly_enabled()
        self.deterministic = (torch.are_deterministic_algorithms_enabled(),
                              torch.is_deterministic_algorithms_warn_only_enabled())
        self.matmul = torch.get_float32_matmul_precision()
        self.cwd = _cwd()
        self.environ = dict(os.environ)
        self.clock = time.monotonic()
        if _HAS_ALARM:
            self.handler = signal.getsignal(signal.SIGALRM)
            self.timer = signal.getitimer(signal.ITIMER_REAL)[0]
            self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])

    def restore_first(self) -> None:
        """What must be undone before any other code of ours runs: tracing and modes."""
        if sys.gettrace() is not self.trace:  # a tracer can rewrite the test's variables
            sys.settrace(self.trace)
        if sys.getprofile() is not self.profile:
            sys.setprofile(self.profile)
        if sys.getrecursionlimit() != self.recursion:
            sys.setrecursionlimit(self.recursion)
        while _C._len_torch_function_stack() > self.function_modes:
            _C._pop_torch_function_stack()
        while _C._len_torch_dispatch_stack() > self.dispatch_modes:
            _C._pop_torch_dispatch_stack()
        if _device_context() is not self.device_context:  # torch.set_default_device(...)
            torch._GLOBAL_DEVICE_CONTEXT.device_context = self.device_context

    def restore(self, signals: bool, returned: bool) -> None:
        _set_grad_enabled(self.grad)
        if torch.get_default_dtype() != self.dtype:
            _set_default_dtype(self.dtype)
        if torch.get_num_threads() != self.threads:
            _set_num_threads(self.threads)
        if torch.is_anomaly_enabled() != self.anomaly:
            _set_anomaly(self.anomaly)
        if (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled()) != self.deterministic:
            _use_deterministic(self.deterministic[0], warn_only=self.deterministic[1])
        if torch.get_float32_matmul_precision() != self.matmul:
            _set_matmul_precision(self.matmul)
        if self.cwd is not None and _cwd() != self.cwd:
            os.chdir(self.cwd)
        if os.environ != self.environ:
            for key in [k for k in os.environ if k not in self.environ]:
                del os.environ[key]
            os.environ.update(self.environ)
        if not (signals and _HAS_ALARM):
            return
        if self.handler is not None and signal.getsignal(signal.SIGALRM) is not self.handler:
            signal.signal(signal.SIGALRM, self.handler)
        if signal.pthread_sigmask(signal.SIG_BLOCK, []) != self.mask:
            signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)
        if returned and self.timer > 0:  # the per-test alarm was running: keep it running
            left = max(self.timer - (time.monotonic() - self.clock), 0.001)
            if abs(signal.getitimer(signal.ITIMER_REAL)[0] - left) > 0.5:
                signal.setitimer(signal.ITIMER_REAL, left)


class learner_code:  # noqa: N801 (used as a context manager, like contextlib's)
    """``with learner_code(): ...`` runs the learner's code, then undoes what it changed in
    this process (see the module docstring), whether it returned or raised."""

    def __enter__(self) -> learner_code:
        self.state = _GlobalState()
        self.namespaces = _TESTS[-1] if _TESTS else _Namespaces()
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        self.state.restore_first()
        self.namespaces.restore()
        self.state.restore(signals=True, returned=kind is None)


@contextlib.contextmanager
def isolated_test() -> Iterator[None]:
    """Around one graded test: what learner code changes is undone after each call (by
    :class:`learner_code`, which restores to the snapshot this takes) and again when the
    test ends, with torch's and Python's random states."""
    # Taken before the first test's learner code ran and restored after every test, the
    # process's snapshot stays right for every later test; extend() adds new modules.
    if not _PROCESS:
        _PROCESS.append(_Namespaces())
    namespaces, state = _PROCESS[0].extend(), _GlobalState()
    rng = torch.get_rng_state(), random.getstate()
    _TESTS.append(namespaces)
    try:
        yield
    finally:
        _TESTS.remove(namespaces)
        state.restore_first()
        namespaces.restore()
        state.restore(signals=False, returned=False)
        torch.set_rng_state(rng[0])
        random.setstate(rng[1])


# ------------------------------------------------------------------ arguments and results


def pristine_call(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Copies of a call's arguments for the learner's function: every tensor (also inside
    lists, tuples and dicts) cloned once, still attached to the autograd graph so gradients
    reach the original; everything else deep-copied, or passed as it is if it cannot be."""
    memo: dict[int, Any] = {}
    for value in (*args, *kwargs.values()):
        _clone_tensors(value, memo, 0)

    def copied(value: Any) -> Any:
        try:
            return copy.deepcopy(value, memo)
        except Exception:
            return value

    return tuple(copied(a) for a in args), {k: copied(v) for k, v in kwargs.items()}


def _clone_tensors(value: Any, memo: dict[int, Any], depth: int) -> None:
    if isinstance(value, Tensor):
        if id(value) not in memo:
            memo[id(value)] = value.clone()
    elif depth < 50 and isinstance(value, list | tuple):
        for item in value:
            _clone_tensors(item, memo, depth + 1)
    elif depth < 50 and isinstance(value, dict):
        for item in value.values():
            _clone_tensors(item, memo, depth + 1)


def plain(value: Any) -> Any:
    """``value`` (a learner's result) as plain values, read by paths its own methods cannot
    intercept: a ``torch.Tensor`` (same data, same autograd graph) for a tensor subclass, the
    base type for subclasses of int, float, str, tuple, list and dict, and for any other object
    a stand-in with the same type name and repr that equals nothing."""
    return _plain(value, {}, 0)


def _plain(x: Any, memo: dict[int, Any], depth: int) -> Any:
    t = type(x)
    if x is None or t is bool or t is int or t is float or t is str:
        return x
    if issubclass(t, Tensor):
        return _plain_tensor(x)
    if id(x) in memo:
        return memo[id(x)]
    if depth > 100:
        return _foreign(x)
    if issubclass(t, int):
        return _INT(x)
    if issubclass(t, float):
        return _FLOAT(x)
    if issubclass(t, str):
        return _STR(x)
    if issubclass(t, tuple):
        return tuple(_plain(_TUPLE_GET(x, i), memo, depth + 1) for i in range(_TUPLE_LEN(x)))
    if issubclass(t, list):
        out: list = []
        memo[id(x)] = out
        out.extend(_plain(_LIST_GET(x, i), memo, depth + 1) for i in range(_LIST_LEN(x)))
        return out
    if issubclass(t, dict):
        result: dict = {}
        memo[id(x)] = result
        for k, v in list(_DICT_ITEMS(x)):
            result[_plain(k, memo, depth + 1)] = _plain(v, memo, depth + 1)
        return result
    return _foreign(x)


def _plain_tensor(x: Tensor) -> Any:
    if type(x) is not Tensor:
        try:
            with _NO_SUBCLASS_TORCH_FUNCTION():
                x = _AS_SUBCLASS(x, Tensor)
        except Exception:
            return _foreign(x)
    if _C._dispatch_keys(x).has(_C.DispatchKey.Python):  # a __torch_dispatch__ subclass
        return _foreign(x)
    return x


class _Foreign:
    """Stands for a result of a type the graded tests never expect: it equals nothing."""

    __slots__ = ("_text",)

    def __init__(self, text: str) -> None:
        self._text = text

    def __eq__(self, other: object) -> bool:
        return False

    def __ne__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return self._text


_FOREIGN_TYPES: dict[str, type] = {}


def _foreign(x: Any) -> _Foreign:
    name = _TYPE_NAME.__get__(type(x))
    name = _STR(name) if isinstance(name, str) and name.isidentifier() else "object"
    if name not in _FOREIGN_TYPES:
        _FOREIGN_TYPES[name] = type(name, (_Foreign,), {"__slots__": ()})
    with learner_code():  # repr runs the learner's __repr__
        try:
            text = _STR(repr(x))
        except Exception:
            text = f"<{name} object>"
    return _FOREIGN_TYPES[name](text[:300])


def backward(loss: Tensor, *inputs: Tensor) -> tuple[Tensor | None, ...]:
    """``loss.backward()`` as learner code (the learner's autograd functions and hooks run),
    then the gradients of ``inputs`` as plain tensors (None where there is none)."""
    with learner_code():
        loss.backward()
    grads = []
    for x in inputs:
        grad = x.grad if x.grad is None else plain(x.grad)
        if isinstance(grad, Tensor):
            x.grad = grad
        grads.append(grad)
    return tuple(grads)


# ------------------------------------------------------------------ checks


def _idx(idx: tuple[int, ...]) -> str:
    return ", ".join(map(str, idx))


def expect_tensor(x: Any, name: str, shape: tuple[int, ...]) -> Tensor:
    """``x`` must be a floating-point tensor of ``shape``; returns it as a plain tensor."""
    x = plain(x)
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
    x = plain(x)
    if isinstance(x, Tensor) and x.ndim != 0:
        pytest.fail(f"{name} should be a scalar tensor (shape ()), got shape {tuple(x.shape)}: "
                    "did you forget to average?", pytrace=False)
    return expect_tensor(x, name, ())


def expect_pair(x: Any, name: str, what: str) -> tuple[Any, Any]:
    x = plain(x)
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
    actual, expected = plain(actual), plain(expected)
    if not isinstance(actual, Tensor):
        pytest.fail(f"{name} should be a torch.Tensor, got {type(actual).__name__}: "
                    f"{_short(actual)}", pytrace=False)
    expected = expected.to(actual.dtype)
    if actual.ndim == 0:
        if not _allclose(actual.detach(), expected, atol=atol, rtol=rtol, equal_nan=False):
            reason = why if isinstance(why, str) else (why(()) if why else "")
            pytest.fail(f"{name} is {_num(actual)} but should be {_num(expected)}"
                        + (f": {reason}" if reason else ""), pytrace=False)
        return
    ok = _isclose(actual.detach(), expected, atol=atol, rtol=rtol)
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
