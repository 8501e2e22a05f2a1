"""One escaping of untrusted text (tensor and module names, paths, config values) before it is printed:
control characters, bidi overrides (Trojan Source) and other invisible characters become visible escapes."""

from __future__ import annotations


def escape_controls(text: object) -> str:
    """``text`` with every character that is not printable (``\\n``, ESC, ``\\u202e``, ...) written as its
    Python escape, so a name can neither break a line, colour a terminal nor reorder what is shown."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(text))
