"""What a config field may hold, stated once on the field, and the checks that read it.

A numeric field of a config dataclass declares its range beside its default::

    steps: int = setting(10, ">= 1")
    tau: float = setting(0.4, "(0, 1]")

:func:`check_fields` (called first by every config's ``validate``) then refuses, for every field,
a value of the wrong type (``"false"`` for a bool, ``2.5`` for an int), a non-finite float, and a
number outside its range; for a tuple field the range holds for each element. The errors name the
field, and a config that holds the section names it in full (``irn.sem_seg_bg_thres must be in
[0, 1], got 3``). :func:`coerce` gives the same type checks to plain values read from a file.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import io
import json
import math
import numbers
import textwrap
import tokenize
import typing
from dataclasses import dataclass
from typing import Any, Collection, Optional, Sequence


# The numerics of the GPU stages' ``precision`` setting (rib_ext.precision says what each means);
# here, below both the configs and rib_ext.precision, which are independent of each other.
Precision = typing.Literal["float32", "tf32", "bf16"]
PRECISIONS = typing.get_args(Precision)


class ConfigError(ValueError):
    """A setting out of its range, or a config file that does not fit the dataclasses.

    ``field`` is the dotted name of the setting at fault (None when the error concerns several):
    :meth:`within` puts the enclosing section's name in front of it.
    """

    def __init__(self, message: str, field: Optional[str] = None):
        self.detail, self.field = message, field
        # "x must be ..." for a value out of range, "x: expected ..." for a wrong type.
        sep = " " if message.startswith("must") else ": "
        super().__init__(f"{field}{sep}{message}" if field else message)

    def within(self, section: str) -> "ConfigError":
        if not section:
            return self
        if self.field:
            return ConfigError(self.detail, f"{section}.{self.field}")
        if self.detail.startswith(section):
            return self
        return ConfigError(f"{section}: {self.detail}")


@dataclass(frozen=True)
class Range:
    """An interval of numbers: ``"[0, 1]"``, ``"(0, 1]"``, ``"[0, 255]"``, ``">= 1"``, ``"> 0"``."""

    text: str
    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False

    @classmethod
    def parse(cls, text: str) -> "Range":
        t = text.strip()
        if t.startswith(">="):
            return cls(t, lo=float(t[2:]))
        if t.startswith(">"):
            return cls(t, lo=float(t[1:]), lo_open=True)
        if t[:1] in "[(" and t[-1:] in "])" and "," in t:
            lo, hi = (float(x) for x in t[1:-1].split(","))
            return cls(t, lo, hi, t[0] == "(", t[-1] == ")")
        raise ValueError(f"not a range: {text!r} (expected e.g. '[0, 1]', '(0, 1]' or '>= 1')")

    def __contains__(self, value: float) -> bool:
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def describe(self) -> str:
        return self.text if self.text[0] in "<>" else f"in {self.text}"


def setting(default: Any = dataclasses.MISSING, range: Optional[str] = None, *,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its default and, for numbers, its range (see :class:`Range`)."""
    metadata = {"range": Range.parse(range)} if range is not None else {}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def field_range(f: dataclasses.Field) -> Optional[Range]:
    return f.metadata.get("range")


# ------------------------------------------------------------------------------------ types

def _optional(hint) -> tuple[bool, Any]:
    if typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return True, args[0]
    return False, hint


def choices_of(hint) -> Optional[tuple]:
    """The values a ``Literal[...]`` field (or an Optional one) takes; None for any other type.
    A text setting with a fixed set of values says so in its type: the checks and the flags'
    choices both read it from there."""
    _, hint = _optional(hint)
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None


def is_numeric(hint) -> bool:
    """Whether a field of this type holds numbers (int, float, Optional or tuples of them)."""
    _, hint = _optional(hint)
    if typing.get_origin(hint) is tuple:
        return any(is_numeric(a) for a in typing.get_args(hint) if a is not Ellipsis)
    return hint in (int, float)


def type_name(hint) -> str:
    optional, hint = _optional(hint)
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            name = f"a list of {type_name(args[0])}s"
        else:
            name = f"a list of {len(args)} values ({', '.join(type_name(a) for a in args)})"
    elif choices_of(hint) is not None:
        name = "one of " + ", ".join(map(str, choices_of(hint)))
    else:
        name = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
            hint, getattr(hint, "__name__", str(hint)))
    return f"{name} or null" if optional else name


def shown(value: Any) -> str:
    """A value as the config file spells it (null, true, "3")."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def coerce(hint, value: Any, where: str) -> Any:
    """``value`` as a field of type ``hint`` holds it: lists become tuples, integers become floats
    where a float is expected; anything else of the wrong type is a :class:`ConfigError` naming
    ``where`` and the expected type. (A bool is not an integer here, nor a string a bool.)"""
    optional, inner = _optional(hint)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"expected {type_name(hint)}, got null", where)
    if typing.get_origin(inner) is tuple:
        args = typing.get_args(inner)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected {type_name(hint)}, got {shown(value)}", where)
        if len(args) == 2 and args[1] is Ellipsis:
            kinds = [args[0]] * len(value)
        else:
            kinds = list(args)
            if len(value) != len(kinds):
                raise ConfigError(f"expected {type_name(hint)}, got {len(value)} values "
                                  f"{shown(list(value))}", where)
        return tuple(coerce(k, v, where) for k, v in zip(kinds, value))
    choices = choices_of(inner)
    if choices is not None:
        if not isinstance(value, str):  # a wrong type, said as for the other types
            raise ConfigError(f"expected {type_name(hint)}, got {shown(value)}", where)
        if value in choices:
            return value
        raise ConfigError(f"must be one of {', '.join(choices)}, got {shown(value)}", where)
    if inner is bool:
        if isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", "") == "b":
            return bool(value)
    elif inner is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return value
    elif inner is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return value if isinstance(value, float) else float(value)
    elif inner is str:
        if isinstance(value, str):
            return value
    else:
        return value  # a type these configs do not use: left to the class
    raise ConfigError(f"expected {type_name(hint)}, got {shown(value)}", where)


# ----------------------------------------------------------------------------------- checks

def _numbers(value) -> Sequence:
    if value is None or isinstance(value, bool):
        return ()
    if isinstance(value, (tuple, list)):
        return [x for v in value for x in _numbers(v)]
    return (value,) if isinstance(value, numbers.Real) else ()


def check_value(f: dataclasses.Field, hint, value: Any) -> Any:
    """``value`` of field ``f`` checked for type, finiteness and range; returned as stored
    (lists as tuples)."""
    value = coerce(hint, value, f.name)
    rng = field_range(f)
    for x in _numbers(value):
        if not math.isfinite(x):
            raise ConfigError(f"must be finite, got {x}", f.name)
        if rng is not None and x not in rng:
            got = value if isinstance(value, tuple) else x
            each = " (each value)" if isinstance(value, tuple) else ""
            raise ConfigError(f"must be {rng.describe()}{each}, got {got}", f.name)
    return value


def check_fields(obj, skip: Collection[str] = ()) -> None:
    """Check every field of the config dataclass ``obj`` (see the module docstring) but those
    named in ``skip``. Nested config dataclasses are validated again (an in-place edit skips
    their ``__post_init__``)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            try:
                value.validate()
            except ConfigError as err:
                raise err.within(f.name) from err
            continue
        checked = check_value(f, hints[f.name], value)
        if type(checked) is not type(value) or checked != value:  # a list, an int for a float
            object.__setattr__(obj, f.name, checked)


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def nearest(name: str, known) -> str:
    """"; did you mean X?" for the closest known name, or nothing."""
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"; did you mean {close[0]}?" if close else ""


@functools.lru_cache(maxsize=None)
def field_docs(cls) -> dict:
    """Field name -> its documentation, read from the comments of the class's source as written
    beside the field: the comment lines right above it and the comment at the end of its lines
    (``--help`` shows them). A comment starting with ``--`` heads a group of fields, not one."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (a class made at run time)
        return {}
    comments: dict = {}  # line -> (text, whole line)
    code_lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            line = tok.start[0]
            comments[line] = (tok.string.lstrip("#").strip(), line not in code_lines)
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                              tokenize.ENDMARKER):
            for line in range(tok.start[0], tok.end[0] + 1):
                code_lines.add(line)
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    docs = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and node.target.id in names):
            continue
        above = []
        line = node.lineno - 1
        while line in comments and comments[line][1] and not comments[line][0].startswith("--"):
            above.insert(0, comments[line][0])
            line -= 1
        after = [comments[n][0] for n in range(node.lineno, node.end_lineno + 1)
                 if n in comments and not comments[n][1]]
        text = " ".join(t for t in above + after if t)
        if text:
            docs[node.target.id] = text
    return docs
