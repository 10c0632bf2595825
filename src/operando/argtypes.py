"""argparse value types shared by the command lines (``operando ...`` and its verb modules)."""

from __future__ import annotations

import argparse

__all__ = ["int_list"]


def int_list(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` → ``(1, 2, 3)``; anything else is a usage error naming the value."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
