"""Printing what came from a user or a dataset as plain text: the one helper for views, progress and the CLI.

A class name, a file name in an error, a worker's host name can hold rich markup (``[/x]`` crashes
rich, ``[red]`` restyles) or terminal control sequences (ESC ... moves the cursor, retitles the window).
:func:`plain` removes control characters (C0 except newline and tab, DEL, C1) and :func:`markup_safe`
also escapes rich markup; :func:`text` gives a ``rich.text.Text`` (never parsed as markup).
"""
from __future__ import annotations

import re

# ESC-introduced sequences first (CSI ... final byte, OSC ... BEL/ST), then any lone control character
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x9b[0-?]*[ -/]*[@-~]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(value: object, *, one_line: bool = False) -> str:
    """``str(value)`` without terminal control characters (newlines kept unless ``one_line``)."""
    result = _CONTROL.sub("", _ESCAPES.sub("", str(value)))
    return " ".join(result.split("\n")) if one_line else result


def markup_safe(value: object, *, one_line: bool = False) -> str:
    """``plain(value)`` with rich markup escaped, for strings that rich will parse."""
    from rich.markup import escape

    return escape(plain(value, one_line=one_line))


def text(value: object, *, one_line: bool = True):
    """A ``rich.text.Text`` of ``plain(value)``: table cells never parse markup."""
    from rich.text import Text

    return Text(plain(value, one_line=one_line))


def plural(n: int, word: str) -> str:
    """``1 class``, ``2 classes``, ``3 shards``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}{'es' if word.endswith('s') else 's'}"
