"""A small parser for the option style of swift-argument-parser.

Options take `--name value`, `--name=value` or `-n value`; short flags combine
(`-it`). Commands with passthrough arguments (`create IMAGE ARGS...`, `exec ID
ARGS...`) stop reading options at the first positional argument, so the
container's own arguments are never taken for options.
"""

from __future__ import annotations

import dataclasses

from .errors import usage


@dataclasses.dataclass
class Parsed:
    options: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    flags: set[str] = dataclasses.field(default_factory=set)
    positionals: list[str] = dataclasses.field(default_factory=list)

    def last(self, name: str) -> str | None:
        values = self.options.get(name)
        return values[-1] if values else None

    def all(self, name: str) -> list[str]:
        return self.options.get(name, [])


@dataclasses.dataclass(frozen=True)
class Spec:
    """Names of a subcommand's options: each spelling maps to a canonical name."""

    command: str
    options: dict[str, str] = dataclasses.field(default_factory=dict)
    flags: dict[str, str] = dataclasses.field(default_factory=dict)
    # After this many positionals, every remaining word is a passthrough argument.
    passthrough_after: int | None = None


def parse(args: list[str], spec: Spec) -> Parsed:
    parsed = Parsed()
    index = 0
    while index < len(args):
        word = args[index]
        index += 1
        if _passthrough_started(parsed, spec):
            parsed.positionals.append(word)
        elif word == "--":
            parsed.positionals += args[index:]
            break
        elif word.startswith("--"):
            index = _long_option(word, args, index, spec, parsed)
        elif word.startswith("-") and len(word) > 1:
            index = _short_options(word, args, index, spec, parsed)
        else:
            parsed.positionals.append(word)
    return parsed


def _passthrough_started(parsed: Parsed, spec: Spec) -> bool:
    limit = spec.passthrough_after
    return limit is not None and len(parsed.positionals) >= limit


def _long_option(word: str, args: list[str], index: int, spec: Spec, parsed: Parsed):
    name, has_value, value = word.partition("=")
    if name in spec.flags and not has_value:
        parsed.flags.add(spec.flags[name])
        return index
    if name not in spec.options:
        raise usage(f"Unknown option '{name}'", spec.command)
    if not has_value:
        value, index = _value_after(name, args, index, spec)
    parsed.options.setdefault(spec.options[name], []).append(value)
    return index


def _short_options(word: str, args: list[str], index: int, spec: Spec, parsed: Parsed):
    letters = word[1:]
    for position, letter in enumerate(letters):
        name = f"-{letter}"
        if name in spec.flags:
            parsed.flags.add(spec.flags[name])
            continue
        if name not in spec.options:
            raise usage(f"Unknown option '{name}'", spec.command)
        rest = letters[position + 1 :]
        if rest:
            value = rest
        else:
            value, index = _value_after(name, args, index, spec)
        parsed.options.setdefault(spec.options[name], []).append(value)
        return index
    return index


def _value_after(name: str, args: list[str], index: int, spec: Spec):
    if index >= len(args):
        raise usage(f"Missing value for '{name} <value>'", spec.command)
    return args[index], index + 1


def require_int(value: str, name: str, command: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise usage(f"The value '{value}' is invalid for '{name}'", command) from None


def require_positionals(
    parsed: Parsed, count: int, argument: str, command: str
) -> None:
    if len(parsed.positionals) < count:
        raise usage(f"Missing expected argument '<{argument}>'", command)
