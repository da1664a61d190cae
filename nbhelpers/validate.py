"""The validation layer at the public boundary: every public function checks its arguments here, by name.

A bad argument raises :class:`ArgumentError` (a ``ValueError``) whose message names the argument, the value
given, the accepted range and the fix. Nothing is truncated or coerced silently: the only conversions are
lossless ones (a seed of ``3.0`` or ``numpy.int64(3)`` is the whole number 3; a single word given as a string
is a list of one word), so equal arguments give equal cache keys.

:func:`validated` applies the rules in :data:`RULES` to the parameters of a function that carry those names;
a function's own checks (which word is in which prompt, a step inside a trace) stay where the knowledge is.
"""
from __future__ import annotations

import functools
import inspect
import math
import numbers
from typing import Any, Callable

from .errors import NbhelpersError

MAX_SEED = 2**63 - 1


class ArgumentError(NbhelpersError, ValueError):
    """An argument outside what the function accepts; the message names it, its value and the fix."""


class UnknownArgumentError(NbhelpersError, TypeError):
    """A keyword the function does not take; the message lists the ones it does."""


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def whole_number(name: str, value, minimum: int = 1, maximum: int | None = None, hint: str = "") -> int:
    """``value`` as an int in ``minimum..maximum``: ints, numpy integers and integral floats (3.0) pass;
    bools, fractions, strings and None are refused."""
    ok = isinstance(value, numbers.Integral) or (isinstance(value, float) and math.isfinite(value)
                                                 and value.is_integer())
    if isinstance(value, bool) or not ok:
        raise ArgumentError(f"{name}={_show(value)} is not a whole number; give an integer such as "
                            f"{name}={max(minimum, 1) if maximum is None else minimum}" + (f" ({hint})" if hint else ""))
    v = int(value)
    if v < minimum or (maximum is not None and v > maximum):
        rng = f"{minimum}..{maximum}" if maximum is not None else f"at least {minimum}"
        raise ArgumentError(f"{name}={v} is out of range: it must be {rng}" + (f" ({hint})" if hint else ""))
    return v


def count(minimum: int = 1, maximum: int | None = None, hint: str = "") -> Callable[[str, Any], int]:
    return lambda name, value: whole_number(name, value, minimum, maximum, hint)


def optional(rule: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda name, value: None if value is None else rule(name, value)


def seed(name: str, value) -> int:
    """A random seed: a whole number 0..2**63-1 (it picks a torch generator's stream)."""
    if value is None:
        raise ArgumentError(f"{name}=None: give a whole number such as {name}=0 (seeds make results reproducible)")
    return whole_number(name, value, 0, MAX_SEED, "seeds are whole numbers 0..2**63-1")


def seeds(name: str, value):
    """One seed or a list of seeds."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ArgumentError(f"{name}=[] is empty; give at least one seed, e.g. {name}=[0, 1, 2]")
        return [seed(f"{name}[{i}]", v) for i, v in enumerate(value)]
    if hasattr(value, "__len__") and not isinstance(value, (str, bytes)):
        return seeds(name, list(value))
    return seed(name, value)


def real(name: str, value, minimum: float | None = None, maximum: float | None = None, hint: str = "",
         open_low: bool = False, open_high: bool = False) -> float:
    """A finite real number in [minimum, maximum] (ends open where asked)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentError(f"{name}={_show(value)} is not a number" + (f"; {hint}" if hint else ""))
    v = float(value)
    if not math.isfinite(v):
        raise ArgumentError(f"{name}={v} is not finite" + (f"; {hint}" if hint else ""))
    low_bad = minimum is not None and (v <= minimum if open_low else v < minimum)
    high_bad = maximum is not None and (v >= maximum if open_high else v > maximum)
    if low_bad or high_bad:
        lo = "-inf" if minimum is None else f"{minimum:g}"
        hi = "inf" if maximum is None else f"{maximum:g}"
        rng = ("(" if open_low else "[") + f"{lo}, {hi}" + (")" if open_high else "]")
        raise ArgumentError(f"{name}={v:g} is out of range {rng}" + (f"; {hint}" if hint else ""))
    return v


def guidance(name: str, value) -> float:
    """Classifier-free guidance scale: finite and ≥ 1 (diffusers applies guidance only above 1, so a value
    below 1 would silently mean 1)."""
    return real(name, value, 1.0, None, "diffusers guides only above 1 (1 = the conditional model alone); "
                                        "typical values are 3-8")


def samples(name: str, value):
    """Monte Carlo samples per image: a positive whole number, or "auto" (sample until ``target_stderr``)."""
    if isinstance(value, str):
        if value == "auto":
            return value
        raise ArgumentError(f"{name}={value!r}: give a whole number of samples (e.g. {name}=64) or {name}='auto' "
                            "with target_stderr=")
    return whole_number(name, value, 1, None, "samples per image")


def text(name: str, value) -> str:
    """A non-empty string (a prompt, a word, a caption)."""
    from .errors import EmptyPromptError, PromptError

    if not isinstance(value, str):
        raise PromptError(f"{name} must be a string, got {type(value).__name__} ({_show(value)})")
    if not value.strip():
        raise EmptyPromptError(f"{name}={value!r} is empty; give text such as 'a red circle'")
    return value


def texts(name: str, value, minimum: int = 1) -> list[str]:
    """A list of non-empty strings (a single string is refused: it would be read letter by letter)."""
    from .errors import PromptError

    if isinstance(value, str):
        raise PromptError(f"{name}={_show(value)} is one string; give a list, e.g. {name}=[{value!r}]")
    try:
        items = list(value)
    except TypeError:
        raise PromptError(f"{name} must be a list of strings, got {type(value).__name__}") from None
    if len(items) < minimum:
        raise ArgumentError(f"{name}={_show(items)} has {len(items)} item(s); give at least {minimum}")
    return [text(f"{name}[{i}]", v) for i, v in enumerate(items)]


def words(name: str, value):
    """None (every word of the prompt), one word, or a list of words; a single string is one word."""
    if value is None:
        return None
    if isinstance(value, str):
        return [text(name, value)]
    return texts(name, value, minimum=0)


def concepts(name: str, value) -> list[str]:
    """Concept words for ConceptAttention: a list of at least two distinct non-empty strings (its maps
    are a softmax over the concepts, so one concept would be 1 everywhere; the result is keyed by them)."""
    items = texts(name, value)
    if len(items) < 2:
        raise ArgumentError(f"{name}={_show(items)} has one concept; the maps are a softmax over concepts, so give "
                            f"at least two, e.g. {name}=[{items[0]!r}, 'background']")
    seen = set()
    for v in items:
        if v in seen:
            raise ArgumentError(f"{name}={_show(items)} names {v!r} twice; give each concept once")
        seen.add(v)
    return items


def choice(options: tuple) -> Callable[[str, Any], Any]:
    def check(name, value):
        if value not in options:
            raise ArgumentError(f"{name}={_show(value)} is not one of {', '.join(map(repr, options))}")
        return value

    return check


def probability(name: str, value) -> float:
    return real(name, value, 0.0, 1.0, "a probability strictly between 0 and 1", open_low=True, open_high=True)


# name -> rule (name, value) -> the checked value. Applied to every parameter of that name.
RULES: dict[str, Callable[[str, Any], Any]] = {
    "seed": seed,
    "n": count(1, None, "a number of samples or images"),
    "steps": count(1, 1000, "denoising steps, at most the scheduler's 1000 training steps"),
    "gen_steps": count(1, 1000, "denoising steps"),
    "guidance": guidance,
    "n_masks": count(1, None, "random masks"),
    "n_points": count(2, None, "points on the deletion curve"),
    "n_random": count(0, None, "random orderings (0: none)"),
    "n_boot": count(1, None, "bootstrap resamples"),
    "cells": count(1, None, "mask cells per side"),
    "batch_size": count(1, None, "samples per UNet call"),
    "batch": count(1, None, "images per UNet call"),
    "max_batch": optional(count(1, None, "samples per UNet call")),
    "n_pid": count(0, None, "images for the PID part (0 skips it)"),
    "pid_samples": count(2, None, "samples per PID estimate"),
    "target_stderr": optional(lambda name, v: real(name, v, 0.0, None, "a standard error in nats, e.g. 0.5",
                                                   open_low=True)),
    "budget_mb": lambda name, v: real(name, v, 0.0, None, "megabytes of attention kept", open_low=True),
    "p": probability,
    "prompt": lambda name, v: v if v is None else text(name, v),
    "word": text,
    "word1": text,
    "word2": text,
    "words": words,
    "captions": texts,
    "others": texts,
    "subjects": texts,
    "templates": texts,
    "prompts": texts,
    "concepts": concepts,
}


def check(name: str, value):
    """Apply the rule for ``name`` (if any) to ``value``; returns the checked value."""
    rule = RULES.get(name)
    return value if rule is None else rule(name, value)


def validated(fn: Callable | None = None, *, skip: tuple[str, ...] = (), rules: dict | None = None) -> Callable:
    """Decorator: check every argument of ``fn`` that has a rule (``RULES``, updated by ``rules``; not those in
    ``skip``) before the call, and pass on the checked values."""

    def wrap(f: Callable) -> Callable:
        sig = inspect.signature(f)
        own = dict(RULES, **(rules or {}))
        names = [p for p in sig.parameters if p in own and p not in skip]
        if not names:
            return f

        @functools.wraps(f)
        def inner(*args, **kwargs):
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError as e:
                raise UnknownArgumentError(f"{f.__name__}(): {e}; see help({f.__name__})") from None
            for nm in names:
                if nm in bound.arguments:
                    if bound.arguments[nm] is None and sig.parameters[nm].default is None:
                        continue  # None where None is the default means "the default"
                    bound.arguments[nm] = own[nm](nm, bound.arguments[nm])
            return f(*bound.args, **bound.kwargs)

        inner.__signature__ = sig
        return inner

    return wrap(fn) if fn is not None else wrap
