"""A configuration's problems as one `ConfigError` line: each key, where its value came from, and
what is wrong with it; never the value itself, which may be a secret. An unknown key also names
the known key closest to it ("did you mean 'concurrency'?").

May import: pydantic, `errors`, `config.sources`, `config.values`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from rackwatch.config.sources import CREDENTIALS
from rackwatch.config.values import close_to
from rackwatch.errors import ConfigError


def config_error(exc: ValidationError, where: str, model: type[BaseModel]) -> ConfigError:
    """One line for all problems of validating `model`; include_input=False keeps secret values
    out of it."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = tuple(part for part in error["loc"] if part != "[key]")
        key = ".".join(f"[{part}]" if isinstance(part, int) else str(part) for part in loc)
        key = key.replace(".[", "[")
        if error["type"] == "extra_forbidden":
            message = "unknown key" + _did_you_mean(loc, model)
        elif error["type"] == "missing":
            message = "required but not set"
        else:
            message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{key}{_origin(loc, model)}: {' '.join(message.split())}")
    return ConfigError(f"{where}: " + "; ".join(problems))


def _origin(loc: tuple[str | int, ...], model: type[BaseModel]) -> str:
    """Which override set the value at `loc`, as " (from X)", or "" when it came from the file."""
    if not loc:
        return ""
    if loc[0] in _sections(model) and len(loc) > 1:
        names = [f"RACKWATCH_{loc[0]}__{loc[1]}".upper(), f"RACKWATCH_{loc[0]}".upper()]
        names += [f"MAAS_{loc[1]}".upper()] if loc[0] == "maas" else []
    else:
        names = [f"RACKWATCH_{loc[0]}".upper()]
    for name in names:
        if os.environ.get(name):
            return f" (from {name})"
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    for name, section_key in CREDENTIALS.items():
        if folder and loc[:2] == section_key and (Path(folder) / name).exists():
            return f" (from {Path(folder) / name})"
    return ""


def _did_you_mean(loc: tuple[str | int, ...], model: type[BaseModel]) -> str:
    """ " (did you mean 'concurrency'?)" for the unknown key at `loc`: the key of its own table
    closest to it, else the closest of another table ('check.concurrency'); "" when none is."""
    key, table = str(loc[-1]), loc[:-1]
    if close := close_to(key, _keys_of(table, model)):
        return f" (did you mean {close!r}?)"
    elsewhere: dict[str, str] = {}  # key → its full name, in its first table that has it
    for other in [(), *((section,) for section in _sections(model))]:
        if other != table:
            for name in _keys_of(other, model):
                elsewhere.setdefault(name, ".".join([*other, name]))
    close = close_to(key, elsewhere)
    return f" (did you mean {elsewhere[close]!r}?)" if close else ""


def _sections(model: type[BaseModel]) -> list[str]:
    """The tables of the file that `model` reads: its fields that are models themselves."""
    return [name for name in model.model_fields if _keys_of((name,), model)]


def _keys_of(table: tuple[str | int, ...], model: type[BaseModel]) -> list[str]:
    """The keys that the table at `table` (() for the top) may hold; none for a list or a
    free-form table."""
    found: Any = model
    for part in table:
        field = found.model_fields.get(part) if isinstance(part, str) else None
        found = field.annotation if field is not None else None
        if not (isinstance(found, type) and issubclass(found, BaseModel)):
            return []
    return list(found.model_fields)
