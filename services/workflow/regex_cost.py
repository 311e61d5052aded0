"""An upper estimate of what compiling a ``matches()`` pattern costs in the CEL runtime.

The runtime compiles the pattern again on *every* call (no cache) with Unicode-aware classes, and
that compilation, not the matching, is what is slow: measured on this machine a bare ``\\w`` costs
~0.5 ms to compile, ``\\w{100}`` ~200 ms, ``\\w{1000}`` ~600 ms before failing on the size limit,
while ``[a-z]{1000}`` takes 0.4 ms. :func:`compile_cost` walks the pattern's syntax and adds up
a weight per atom (measured, see ``benchmarks/expression_cost.py``) multiplied by its repetitions,
so validation can refuse costly patterns and the evaluation budget can charge each call.

Units are those of :mod:`services.workflow.expression_cost` (~1 ns of this machine).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Fixed cost of one compilation.
BASE = 90_000
_LITERAL = 150
#: Weights of escapes in Unicode mode (the default) and in ASCII mode (``(?-u)``).
_UNICODE_CLASSES = {"d": 36_000, "D": 80_000, "s": 12_000, "S": 15_000, "w": 1_440_000, "W": 1_860_000,
                    "p": 2_520_000, "P": 2_520_000}  # fmt: skip
_ASCII_CLASSES = {"d": 300, "D": 1_500, "s": 300, "S": 1_500, "w": 600, "W": 1_800, "p": 2_520_000,
                  "P": 2_520_000}  # fmt: skip
_ANY_CHAR = 13_500
_NEGATION = 9_000
#: Case-insensitive mode roughly triples the automaton of a class.
_CASE_FACTOR = 3.5


@dataclass(slots=True)
class _Frame:
    case_insensitive: bool
    unicode: bool
    total: float = 0.0
    branch: float = 0.0
    last: float = 0.0
    flags_seen: list[str] = field(default_factory=list)


def _escape_weight(pattern: str, i: int, frame: _Frame) -> tuple[float, int]:
    """Weight of the escape at ``pattern[i] == '\\'`` and the index after it."""
    if i + 1 >= len(pattern):
        return _LITERAL, i + 1
    ch = pattern[i + 1]
    end = i + 2
    if ch in "pP":
        if end < len(pattern) and pattern[end] == "{":
            close = pattern.find("}", end)
            end = len(pattern) if close < 0 else close + 1
        else:
            end += 1
    elif ch == "x" and end < len(pattern) and pattern[end] == "{":
        close = pattern.find("}", end)
        return _LITERAL, len(pattern) if close < 0 else close + 1
    if ch in _UNICODE_CLASSES:
        weight = (_UNICODE_CLASSES if frame.unicode else _ASCII_CLASSES)[ch]
        return weight * (_CASE_FACTOR if frame.case_insensitive else 1.0), end
    return _LITERAL, end


def _class_weight(pattern: str, i: int, frame: _Frame) -> tuple[float, int]:
    """Weight of the bracket class starting at ``pattern[i] == '['`` and the index after it."""
    j = i + 1
    weight = 0.0
    if j < len(pattern) and pattern[j] == "^":
        weight += _NEGATION
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        weight += _LITERAL
        j += 1
    depth = 1
    while j < len(pattern) and depth:
        ch = pattern[j]
        if ch == "\\":
            w, j = _escape_weight(pattern, j, frame)
            weight += w
            continue
        if pattern.startswith("[:", j):
            close = pattern.find(":]", j)
            j = len(pattern) if close < 0 else close + 2
            weight += _LITERAL
            continue
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        else:
            weight += _LITERAL if ord(ch) < 128 else 4 * _LITERAL
        j += 1
    if frame.case_insensitive:
        weight *= _CASE_FACTOR
    return max(weight, _LITERAL), j


def _repetitions(pattern: str, i: int) -> tuple[float, int] | None:
    """``(copies, next index)`` for a quantifier at ``pattern[i]``, ``None`` if there is none."""
    ch = pattern[i]
    if ch in "*?":
        count, end = 1.0, i + 1
    elif ch == "+":
        count, end = 2.0, i + 1
    elif ch == "{":
        close = pattern.find("}", i)
        if close < 0:
            return None
        body = pattern[i + 1 : close]
        low, _, high = body.partition(",")
        if not low.strip().isdigit() or (high.strip() and not high.strip().isdigit()):
            return None
        count = float(int(high) if high.strip() else int(low) + (1 if "," in body else 0))
        count = max(count, 1.0)
        end = close + 1
    else:
        return None
    if end < len(pattern) and pattern[end] == "?":
        end += 1
    return count, end


def _apply_flags(flags: str, frame: _Frame) -> None:
    on = True
    for f in flags:
        if f == "-":
            on = False
        elif f == "i":
            frame.case_insensitive = on
        elif f == "u":
            frame.unicode = on


def compile_cost(pattern: str) -> float:
    """Estimated cost of compiling ``pattern`` once (an upper estimate; see the module doc)."""
    stack = [_Frame(case_insensitive=False, unicode=True)]
    i = 0
    while i < len(pattern):
        frame = stack[-1]
        ch = pattern[i]
        if ch == "\\":
            frame.last, i = _escape_weight(pattern, i, frame)
            frame.branch += frame.last
        elif ch == "[":
            frame.last, i = _class_weight(pattern, i, frame)
            frame.branch += frame.last
        elif ch == "(":
            i += 1
            inner = _Frame(frame.case_insensitive, frame.unicode)
            if pattern.startswith("?", i):
                close = i
                while close < len(pattern) and pattern[close] not in ":)":
                    close += 1
                flags = pattern[i + 1 : close]
                if close < len(pattern) and pattern[close] == ")" and not flags.startswith(("P<", "<")):
                    _apply_flags(flags, frame)  # `(?i)` sets the flags of the enclosing group
                    frame.last = 0.0
                    i = close + 1
                    continue
                if not flags.startswith(("P<", "<")):
                    _apply_flags(flags, inner)
                else:
                    close = pattern.find(">", i)
                i = close + 1
            stack.append(inner)
        elif ch == ")" and len(stack) > 1:
            done = stack.pop()
            parent = stack[-1]
            parent.last = done.total + done.branch
            parent.branch += parent.last
            i += 1
        elif ch == "|":
            frame.total += frame.branch
            frame.branch = frame.last = 0.0
            i += 1
        elif (rep := _repetitions(pattern, i)) is not None:
            count, i = rep
            frame.branch += frame.last * (count - 1)
            frame.last *= count
        else:
            if ch == ".":
                frame.last = _ANY_CHAR * (1.0 if frame.unicode else 0.05)
            elif ch in "^$":
                frame.last = 0.0
            else:
                frame.last = _LITERAL if ord(ch) < 128 else 4 * _LITERAL
                if frame.case_insensitive and ch.isalpha():
                    frame.last *= _CASE_FACTOR * 20
            frame.branch += frame.last
            i += 1
    while len(stack) > 1:
        done = stack.pop()
        stack[-1].branch += done.total + done.branch
    return BASE + stack[0].total + stack[0].branch
