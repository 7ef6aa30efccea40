"""Method options: each method module declares its knobs once (``OPTIONS``), checked here generically.

An ``Option`` has a name, a kind (``int``, ``float``, ``bool``, ``str``, ``ints``, ``callable``),
a default and a one-line help. ``resolve(method, specs, given)`` rejects unknown names (with a
close match when there is one) and values of the wrong kind, and returns every option with its
value: the given one coerced (``"1e-3"`` -> 0.001 for a float, ``"true"`` -> True for a bool,
as the CLI's ``--method-option KEY=VALUE`` may pass text), else the default.

Invariant: every failure is a ``UserInputError`` whose one line names the option, the method,
what was given and what to pass; nothing here branches on a method's name.
"""
from __future__ import annotations

import difflib
import numbers
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from edgeprune.errors import UserInputError

KINDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "one of",
         "ints": "a list of whole numbers", "callable": "a function"}


@dataclass(frozen=True)
class Option:
    """One method knob. ``optional``: None is accepted (and may be the default)."""

    name: str
    kind: str
    default: Any
    help: str = ""
    choices: tuple[str, ...] = ()
    optional: bool = False

    def expects(self) -> str:
        what = f"one of {', '.join(self.choices)}" if self.kind == "str" and self.choices else KINDS[self.kind]
        return what + (" or null" if self.optional else "")


def _number(value: Any, kind: str) -> Any:
    if isinstance(value, str):
        value = float(value.strip())  # ValueError for text that is not a number
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError
    if kind == "float":
        return float(value)
    if float(value) != int(value):
        raise TypeError
    return int(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise TypeError


def coerce(option: Option, value: Any) -> Any:
    """``value`` as ``option``'s kind; TypeError/ValueError when it is not one."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
        if option.optional:
            return None
        raise TypeError
    if option.kind in ("int", "float"):
        return _number(value, option.kind)
    if option.kind == "bool":
        return _bool(value)
    if option.kind == "str":
        if not isinstance(value, str) or (option.choices and value not in option.choices):
            raise TypeError
        return value
    if option.kind == "ints":
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise TypeError
        return [_number(v, "int") for v in value]
    if option.kind == "callable" and callable(value):
        return value
    raise TypeError


def unknown_error(method: str, name: str, known: Iterable[str], extra: Iterable[str] = ()) -> UserInputError:
    known = sorted(known)
    close = difflib.get_close_matches(name, [*known, *extra], n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    listed = ", ".join(known) if known else "none"
    return UserInputError(f"unknown option {name!r} for pruning method {method}",
                          f"{hint}its options are: {listed}")


def resolve(method: str, specs: Iterable[Option], given: Mapping[str, Any],
            extra_names: Iterable[str] = ()) -> dict[str, Any]:
    """Every option of ``specs`` with its checked value; ``extra_names`` only improve the did-you-mean hint."""
    by_name = {o.name: o for o in specs}
    for name in given:
        if name not in by_name:
            raise unknown_error(method, str(name), by_name, extra_names)
    out = {}
    for name, option in by_name.items():
        if name not in given:
            out[name] = option.default
            continue
        try:
            out[name] = coerce(option, given[name])
        except (TypeError, ValueError, OverflowError):
            raise UserInputError(f"option {name} of pruning method {method} must be {option.expects()}, "
                                 f"got {given[name]!r}", f"e.g. --method-option {name}={_example(option)}") from None
    return out


def _example(option: Option) -> str:
    if option.kind == "str" and option.choices:
        return option.choices[0]
    if option.kind == "bool":
        return "true"
    if option.kind == "ints":
        return "[8,16]"
    return str(option.default) if option.default is not None else "1"


def from_dataclass(cls: type, choices: Mapping[str, tuple[str, ...]] | None = None) -> tuple[Option, ...]:
    """Options from a settings dataclass: its fields' names, annotated kinds and defaults."""
    from dataclasses import fields

    out = []
    for f in fields(cls):
        note = str(f.type)
        kind = "callable" if "Callable" in note else note.split("|")[0].strip()
        out.append(Option(f.name, kind, f.default, choices=tuple((choices or {}).get(f.name, ())),
                          optional="None" in note))
    return tuple(out)
