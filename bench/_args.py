"""Argument types shared by the modes' command lines."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

__all__ = ["counts", "key_value"]


def counts(text: str) -> tuple[int, ...]:
    """ "1,8,32" -> (1, 8, 32): positive integers."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"want positive integers like 1,8,32, not {text!r}")
    return values


def key_value(text: str) -> tuple[str, Any]:
    """ "KEY=VALUE" -> (key, value): an int or float if it reads as one, true/false as bool."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"want KEY=VALUE, not {text!r}")
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return key, kind(value)
    return key, {"true": True, "false": False}.get(value, value)
