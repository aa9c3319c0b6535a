"""Text helpers shared by the Python policies, matching the Rust examples' parsing exactly.

Rust's `str::split_whitespace` and `str::trim` use Unicode White_Space, which is not quite
Python's `str.split()` set (Python also splits on U+001C..U+001F), so the set is spelled out.
"""

import re

# Rust `char::is_whitespace`: the Unicode White_Space property.
_WS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_WS_RUN = re.compile(f"[{_WS}]+")
_TRIM = re.compile(f"^[{_WS}]+|[{_WS}]+$")


def trim(s: str) -> str:
    """`str::trim`."""
    return _TRIM.sub("", s)


def fields(s: str) -> list[str]:
    """`str::split_whitespace`."""
    return [f for f in _WS_RUN.split(s) if f]


def content_lines(text: str):
    """(line number, content) of each line of `text` that is not blank once its `#` comment is cut."""
    for n, line in enumerate(text.split("\n"), start=1):
        line = trim(line.split("#", 1)[0])
        if line:
            yield n, line


def split_list(s: str) -> list[str]:
    """Comma-separated items, trimmed, empty ones skipped."""
    return [item for item in (trim(x) for x in s.split(",")) if item]
