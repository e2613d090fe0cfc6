"""Options declared once: a config dataclass field carries its default, its help text and its rules, and both the
command line and config files are generated from it (TRL's `field(metadata={"help": ...})` pattern).

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class GenerateConfig(Options):
        n: int = option(10, help="candidates per prompt", ge=1)

`add_arguments(parser, GenerateConfig)` adds `--n` (help "candidates per prompt (default: 10)"); `build(cls, file,
cli)` makes the config from the dataclass defaults, then a config file's values, then the flags given; the rules
(`ge`, `gt`, `le`, `lt`, `finite`, `check`) run in `Options.__post_init__`, so a config made in Python is checked
exactly as one made from the command line. How each field type maps to flags:

    bool                      --name / --no-name
    int, float, str           --name VALUE      (Optional ones also take "none")
    an Enum                   --name CHOICE     (choices listed in the help)
    tuple[str, ...] etc.      --name a,b,c
    dict                      --name KEY=VALUE  (repeatable; values are JSON when they parse as JSON)
    a nested Options          --name.field ...  (or the nested flags unprefixed, with flatten=True)
    an Optional nested one    --name / --no-name turns it on or off, plus --name.field ...
    anything else             --name JSON

Fields marked `io=True` are a stage's inputs and outputs (paths, the model it runs): the loop sets them per
iteration, so the loop's per-stage sections do not offer them as flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

MISSING = dataclasses.MISSING


class OptionError(ValueError):
    """An option value breaks its rule; the message names the option (as a flag) and the rule."""


def option(
    default: Any = MISSING,
    *,
    help: str,
    factory: Callable[[], Any] | None = None,
    io: bool = False,
    flatten: bool = False,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    finite: bool = False,
    check: Callable[[Any], Any] | None = None,
    cli: bool = True,
    identity: bool = True,
) -> Any:
    """A dataclass field with its help text and rules. `check(value)` raises ValueError for a bad value.
    identity=False: the option does not change what a stage writes (batch sizes, progress bars), so a resume may
    change it; every other option is part of the run's identity (pipeline/identity.py)."""
    metadata = {"help": help, "io": io, "flatten": flatten, "ge": ge, "gt": gt, "le": le, "lt": lt,
                "finite": finite, "check": check, "cli": cli, "identity": identity}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(path: str) -> str:
    return "--" + path.replace("_", "-")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _is_options(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)


class Options:
    """Base of every config dataclass: coerces enum and tuple values (config files give strings and lists) and
    checks every field's rules, naming the option and the rule."""

    def __post_init__(self):
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            tp, optional = _strip_optional(hints[f.name])
            if value is None:
                if not optional and f.default is not None:
                    raise OptionError(f"{type(self).__name__}.{f.name} must not be None")
                continue
            where = f"{_owner(type(self))}.{f.name}"
            value = _coerce(tp, value, where)
            object.__setattr__(self, f.name, value)
            _check_rules(f, value, f"{where} ({flag_name(f.name)})")


def _owner(cls: type) -> str:
    """"generate.Config", "base.DecodingConfig": where an option is declared."""
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__qualname__}"


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if _is_enum(tp) and not isinstance(value, tp):
        try:
            return tp(value)
        except ValueError:
            raise OptionError(f"{where}: {value!r} is not one of {[e.value for e in tp]}") from None
    if typing.get_origin(tp) is tuple and isinstance(value, list):
        return tuple(value)
    if _is_options(tp) and isinstance(value, Mapping):
        return from_dict(tp, value, where=where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _check_rules(f: dataclasses.Field, value: Any, where: str) -> None:
    m = f.metadata
    if not m:
        return
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if numeric:
        if isinstance(value, float) and math.isnan(value):
            raise OptionError(f"{where} must be a number, got nan")
        if m.get("finite") and not math.isfinite(value):
            raise OptionError(f"{where} must be finite, got {value}")
        for key, ok, word in (("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                              ("le", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<")):
            bound = m.get(key)
            if bound is not None and not ok(value, bound):
                raise OptionError(f"{where} must be {word} {bound}, got {value}")
    if m.get("check") is not None:
        try:
            m["check"](value)
        except (ValueError, TypeError) as e:
            raise OptionError(f"{where}: {e}") from None


# ---------------------------------------------------------------------------------------------------- the codec


def to_dict(obj: Any) -> Any:
    """A config as plain JSON/YAML data (enums as their values, tuples as lists, nested configs as mappings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(cls: type, data: Mapping[str, Any], *, where: str | None = None) -> Any:
    """The config of type `cls` from plain data (a config file section, or to_dict's output). Unknown keys are an
    error naming them; keys of a flattened nested config may stand at this level."""
    where = where or cls.__name__
    if not isinstance(data, Mapping):
        raise OptionError(f"{where}: expected a mapping of option names to values, got {type(data).__name__}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    data = dict(data)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        tp, optional = _strip_optional(hints[name])
        if f.metadata.get("flatten") and _is_options(tp):
            inner = {k: data.pop(k) for k in list(data) if k in {g.name for g in dataclasses.fields(tp)}}
            if name in data:
                nested = data.pop(name)
                if not isinstance(nested, Mapping):
                    raise OptionError(f"{where}.{name}: expected a mapping, got {type(nested).__name__}")
                inner = {**nested, **inner}
            if inner:
                base = to_dict(f.default_factory()) if f.default_factory is not MISSING else to_dict(f.default)
                kwargs[name] = from_dict(tp, {**base, **inner}, where=f"{where}.{name}")
            continue
        if name not in data:
            continue
        value = data.pop(name)
        if value is None:
            kwargs[name] = None
        elif _is_options(tp):
            if value is True:  # an optional nested config switched on with its defaults
                kwargs[name] = tp()
            elif value is False:
                kwargs[name] = None
            else:
                kwargs[name] = from_dict(tp, value, where=f"{where}.{name}")
        else:
            kwargs[name] = _decode_value(tp, value, f"{where}.{name}")
    if data:
        raise OptionError(f"{where}: unknown option(s) {sorted(data)}; known: {sorted(fields)}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise OptionError(f"{where}: {e}") from None


def _decode_value(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise OptionError(f"{where}: expected a list, got {value!r}")
        element = args[0] if args else Any
        if _is_options(element):
            return tuple(v if isinstance(v, element) else from_dict(element, v, where=where) for v in value)
        if element in (int, float):
            return tuple(_scalar(element, v, where) for v in value)
        return tuple(value)
    if tp in (int, float, str, bool):
        return _scalar(tp, value, where)
    return value


def _scalar(tp: type, value: Any, where: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise OptionError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise OptionError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise OptionError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise OptionError(f"{where}: expected a number, got {value!r}") from None
    if not isinstance(value, str):
        raise OptionError(f"{where}: expected a string, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------- the command line


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _default_text(f: dataclasses.Field) -> str:
    if f.default_factory is not MISSING:
        value = to_dict(f.default_factory())
        return "" if value in ({}, [], ()) else f" (default: {value})"
    if f.default is MISSING or f.default is None:
        return ""
    value = to_dict(f.default)
    if isinstance(value, bool):
        return ""
    return f" (default: {value})"


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, prefix: str = "", skip_io: bool = False,
                  dest_prefix: str | None = None) -> None:
    """One flag per field of `cls` (nested configs as `--name.field`); defaults are left to `build`."""
    _add(parser, cls, flag_prefix=prefix, dest_prefix=prefix if dest_prefix is None else dest_prefix,
         skip_io=skip_io)


def _add(parser, cls, *, flag_prefix: str, dest_prefix: str, skip_io: bool) -> None:
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True) or (skip_io and f.metadata.get("io")):
            continue
        tp, optional = _strip_optional(hints[f.name])
        flag = flag_name(flag_prefix + f.name)
        dest = dest_prefix + f.name
        help_text = (f.metadata.get("help") or "") + _default_text(f)
        if _is_options(tp):
            if f.metadata.get("flatten"):
                _add(parser, tp, flag_prefix=flag_prefix, dest_prefix=dest + ".", skip_io=skip_io)
                continue
            if optional:
                parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                                    default=argparse.SUPPRESS, help=help_text + "; its options follow")
            _add(parser, tp, flag_prefix=flag_prefix + f.name + ".", dest_prefix=dest + ".", skip_io=skip_io)
            continue
        kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": help_text}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif _is_enum(tp):
            kwargs["choices"] = [e.value for e in tp]
        elif tp in (int, float, str):
            kwargs["type"] = _optional_scalar(tp) if optional else tp
            kwargs["metavar"] = {int: "N", float: "X", str: "TEXT"}[tp] if f.name not in ("prompts", "out") else "PATH"
        elif typing.get_origin(tp) is tuple and not _is_options((typing.get_args(tp) or (None,))[0]):
            kwargs["metavar"] = "A,B,..."
        elif typing.get_origin(tp) in (dict, Mapping) or tp is dict:
            kwargs.update(type=_key_value, action="append", metavar="KEY=VALUE")
            kwargs["help"] = help_text + "; repeatable, values are JSON when they parse as JSON"
        else:
            kwargs.update(type=json.loads, metavar="JSON")
        parser.add_argument(flag, **kwargs)


def _optional_scalar(tp: type) -> Callable[[str], Any]:
    def parse(text: str):
        if text.strip().lower() == "none":
            return None
        return tp(text)

    parse.__name__ = tp.__name__
    return parse


def namespace_to_dict(values: Mapping[str, Any]) -> dict[str, Any]:
    """argparse's flat {"a.b.c": v} dests as nested mappings; KEY=VALUE lists become mappings. An optional nested
    config's switch ("--lora") and its fields ("--lora.r 8") combine; "--no-lora" switches it off whatever else."""
    out: dict[str, Any] = {}
    off: list[str] = []
    for dest, value in values.items():
        if isinstance(value, bool) and any(d.startswith(dest + ".") for d in values):
            if not value:
                off.append(dest)
            continue
        if isinstance(value, list) and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            value = dict(value)
        *parents, leaf = dest.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    for dest in off:
        *parents, leaf = dest.split(".")
        node = out
        for p in parents:
            node = node[p]
        node[leaf] = False
    return out


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        elif isinstance(v, Mapping) and out.get(k) is True:
            out[k] = dict(v)
        else:
            out[k] = v
    return out


def build(cls: type, *layers: Mapping[str, Any], where: str | None = None) -> Any:
    """The config from its defaults overridden by each layer in turn (a config file's section, then the flags)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = deep_merge(merged, layer)
    return from_dict(cls, merged, where=where)
