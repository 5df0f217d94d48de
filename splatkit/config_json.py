"""Config dataclasses to JSON and back, for any dataclass tyro parses (config.json of a run, resume).

One generic encoder/decoder driven by the type hints, so a new setting or a new plug-in needs no code here:
dataclasses become objects; a field typed as a union of dataclasses (a tyro subcommand choice such as the
strategy) becomes an object with the chosen class's registered `name` first; paths become strings, tuples lists.
Decoding checks every value against its type and names the file and the field of the first mismatch, so an
edited or foreign config.json gets one clear line instead of a traceback. Fields absent from the JSON take
their defaults (configs written before a setting existed still load).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from splatkit.errors import file_error


class _Mismatch(Exception):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field, problem)
        self.field, self.problem = field, problem


def to_json(value: Any) -> Any:
    """A JSON-ready form of a config value (dataclass, union choice, path, tuple, primitive)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
        name = getattr(type(value), "name", None)
        return {"name": name, **fields} if isinstance(name, str) else fields
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def from_json(cls: type, data: Any, *, source: str | Path) -> Any:
    """Rebuild a `cls` instance from `to_json` output. Raises SplatkitError `<source>: field <f>: <problem>`."""
    try:
        return _decode(cls, data, "", None)
    except _Mismatch as exc:
        where = f"field '{exc.field}'" if exc.field else "the config"
        raise file_error(source, f"{where} {exc.problem}") from None


def _strip(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _decode(tp: Any, data: Any, path: str, default: Any) -> Any:
    tp = _strip(tp)
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        members = [_strip(t) for t in typing.get_args(tp)]
        if data is None and type(None) in members:
            return None
        members = [t for t in members if t is not type(None)]
        if len(members) == 1:
            return _decode(members[0], data, path, default)
        return _decode_choice(members, data, path, default)
    if dataclasses.is_dataclass(tp):
        if isinstance(getattr(tp, "name", None), str):  # a registered plug-in, the only one of its kind
            return _decode_choice([tp], data, path, default)
        return _decode_dataclass(tp, data, path)
    if origin is Literal:
        if data not in typing.get_args(tp):
            raise _Mismatch(path, f"is {data!r}; expected one of {', '.join(map(repr, typing.get_args(tp)))}")
        return data
    if origin in (tuple, list):
        if not isinstance(data, list):
            raise _Mismatch(path, f"is {data!r}; expected a list")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        return origin(_decode(item, v, f"{path}[{i}]", None) for i, v in enumerate(data))
    if tp is Path:
        if not isinstance(data, str):
            raise _Mismatch(path, f"is {data!r}; expected a path")
        return Path(data)
    if tp is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if tp in (int, float, str, bool) and not (type(data) is tp):
        raise _Mismatch(path, f"is {data!r}; expected {tp.__name__}")
    return data


def _decode_choice(members: list[type], data: Any, path: str, default: Any) -> Any:
    """One of the registered plug-in configs `members`, chosen by its `name` (when absent, as in configs written
    before plug-ins had names: the default's kind, else the first)."""
    if not isinstance(data, dict):
        raise _Mismatch(path, f"is {data!r}; expected an object")
    by_name = {getattr(m, "name", m.__name__): m for m in members}
    name = data.get("name", getattr(type(default), "name", None) or next(iter(by_name)))
    if name not in by_name:
        raise _Mismatch(f"{path}.name", f"is {name!r}; expected one of {', '.join(map(repr, by_name))}")
    return _decode_dataclass(by_name[name], {k: v for k, v in data.items() if k != "name"}, path)


def _decode_dataclass(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise _Mismatch(path, f"is {data!r}; expected an object")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise _Mismatch(where, f"is not a setting of {cls.__name__} in this version of splatkit")
    values = {}
    for name, field in fields.items():
        where = f"{path}.{name}" if path else name
        default = _default(field)
        if name not in data:
            if default is dataclasses.MISSING:
                raise _Mismatch(where, "is missing")
            continue
        values[name] = _decode(hints[name], data[name], where, default)
    return cls(**values)


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING
