"""Unit-name patterns from users: compiled once, here, with bounded cost.

Every pattern field (``rules[].pattern``, ``ties``, ``include``, ``exclude``, and anything an
export or the service matches against unit names) goes through ``compile_pattern``. Patterns run
on RE2 (``google-re2``), whose matching time is linear in the name's length, so no pattern can
backtrack catastrophically (``(a+)+$`` is as cheap as ``a+$``). RE2 has no backreferences or
lookaround; such a pattern is an InputError. Patterns are also capped at ``MAX_PATTERN_CHARS``
characters (matching cost grows with the pattern too), and errors never echo more than a short
prefix of the pattern.

Semantics are those of ``re.search`` on the unit's full name: anchor with ``^...$`` for exact
names. ``exact_name_patterns`` builds the compact anchored patterns that exports and target rules
write for a list of unit names.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Protocol

from allocator.errors import InputError

MAX_PATTERN_CHARS = 10_000
SHOWN_CHARS = 80


class Matcher(Protocol):
    def search(self, text: str) -> object | None: ...


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to about ``limit`` characters, saying how long the whole was."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def _options():  # type: ignore[no-untyped-def]
    import re2

    options = re2.Options()
    options.log_errors = False  # RE2 would print every rejected pattern to stderr
    options.max_mem = 64 << 20
    return options


@functools.lru_cache(maxsize=4096)
def _compile(pattern: str) -> Matcher:
    import re2

    return re2.compile(pattern, _options())


def compile_pattern(pattern: object, where: str = "pattern") -> Matcher:
    """A compiled unit-name pattern, or an InputError naming ``where``, the pattern and the fix
    (``where=""``: the message starts with the problem, for schema validators)."""
    try:
        return _checked(pattern)
    except InputError as exc:
        raise InputError(f"{where}: {exc}" if where else str(exc)) from None


def _checked(pattern: object) -> Matcher:
    if not isinstance(pattern, str):
        raise InputError(f"{shown(pattern)} is not a string; write a regular expression")
    if not pattern:
        raise InputError("the pattern is empty; write a regular expression")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise InputError(
            f"pattern {shown(pattern)} is longer than {MAX_PATTERN_CHARS} characters; "
            "split it into several rules or use a shorter expression"
        )
    if "\x00" in pattern:
        raise InputError(f"pattern {shown(pattern)} contains a NUL character; remove it")
    try:
        return _compile(pattern)
    except Exception as exc:  # re2.error, or a pattern over RE2's memory budget
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        raise InputError(
            f"pattern {shown(pattern)} is not a valid regular expression "
            f"({shown(str(detail))[1:-1]}); patterns use RE2 syntax (Python re without "
            "backreferences or lookaround)"
        ) from None


def check_pattern(pattern: str, where: str = "pattern") -> str:
    """``pattern`` itself once it compiles (for schema validators)."""
    compile_pattern(pattern, where)
    return pattern


def search(pattern: str, names: list[str], where: str = "pattern") -> list[str]:
    """Names in which ``pattern`` finds a match, in the given order."""
    regex = compile_pattern(pattern, where)
    return [n for n in names if regex.search(n) is not None]


# --- building patterns: exact-name regexes (export configs, target rules) -----------------

_INDEX_RE = re.compile(r"\.(\d+)\.")


def exact_names_regex(names: Iterable[str]) -> str:
    """An unanchored regex matching exactly the given names and nothing else once anchored.

    Names that differ only in one ``.{index}.`` component share one alternation, e.g.
    ``model\\.layers\\.(?:0|12)\\.mlp\\.down_proj``. Anchor the result (``^(?:...)$`` or
    ``re.fullmatch``) before use: unanchored, ``layers.1`` would also match ``layers.12``.
    """
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    singles: list[str] = []
    for name in sorted(set(names)):
        match = _INDEX_RE.search(name)
        if match:
            key = (name[: match.start(1)], name[match.end(1) :])
            groups[key].append(match.group(1))
        else:
            singles.append(name)
    parts = []
    for (prefix, suffix), indices in sorted(groups.items()):
        ordered = sorted(set(indices), key=int)
        alt = ordered[0] if len(ordered) == 1 else "(?:" + "|".join(ordered) + ")"
        parts.append(re.escape(prefix) + alt + re.escape(suffix))
    parts.extend(re.escape(s) for s in singles)
    return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"


def exact_name_patterns(names: Iterable[str], max_chars: int | None = None) -> list[str]:
    """Anchored patterns (``anchored(exact_names_regex(chunk))``) that together match exactly
    ``names``, each at most ``max_chars`` long (default: ``MAX_PATTERN_CHARS``, the limit
    on a user pattern), so rules for thousands of MoE experts stay within it."""
    limit = MAX_PATTERN_CHARS if max_chars is None else max_chars
    ordered = sorted(set(names))
    out: list[str] = []
    start = 0
    while start < len(ordered):
        size = len(ordered) - start
        pattern = anchored(exact_names_regex(ordered[start : start + size]))
        while len(pattern) > limit and size > 1:
            size = max(1, size // 2)
            pattern = anchored(exact_names_regex(ordered[start : start + size]))
        out.append(pattern)
        start += size
    return out


def anchored(regex: str) -> str:
    """``^regex$`` so that re.match and re.search both accept only whole names."""
    return f"^{regex}$"
