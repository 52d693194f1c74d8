"""Typed settings: one frozen dataclass per service, filled from defaults < YAML < env < CLI.

Every field `foo_bar` of a settings class is read from the environment variable `HEADBITS_FOO_BAR`,
from the key `foo_bar` of an optional YAML file (`HEADBITS_CONFIG` or `--config`), and from the
command-line option `--foo-bar`. The Helm chart's values use the same names, so one name means one
thing everywhere. Fields are declared with `setting(default, help)`; the help shows up in `--help`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hmac
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

ENV_PREFIX = "HEADBITS_"
CONFIG_ENV = "HEADBITS_CONFIG"

SettingsT = TypeVar("SettingsT")


class Secret:
    """A setting that must never be shown (a password): its repr, str and format are `***`,
    so a settings object can be logged or appear in an error message whole. `reveal()` hands the
    value to the one client that needs it; nothing else should call it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(
            self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(Secret)

    def __reduce__(self) -> tuple:
        raise TypeError("a Secret is not pickled")


class SettingsError(ValueError):
    """A setting that cannot be read; the message names the setting and where it came from."""


def setting(default: Any, help: str) -> Any:
    """A settings field with its help text."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults: settings are immutable")
    return dataclasses.field(default=default, metadata={"help": help})


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(raw: Any, kind: Any, where: str) -> Any:
    """Turn a YAML/env/CLI value into the field's declared type, or raise SettingsError."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "null")):
            return None
        return _convert(raw, options[0], where)
    if origin is tuple:
        item_kind = typing.get_args(kind)[0]
        if raw is None:
            return ()
        if isinstance(raw, str):
            items = raw.split(",")
        else:
            items = list(raw) if isinstance(raw, list | tuple) else [raw]
        return tuple(_convert(item.strip() if isinstance(item, str) else item, item_kind, where)
                     for item in items if item != "")
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            lowered = str(raw).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{raw!r} is not a boolean (use true or false)")
        if kind is Path:
            return Path(raw)
        if kind is Secret:
            return raw if isinstance(raw, Secret) else Secret(str(raw))
        if isinstance(raw, dict | list | tuple):
            raise ValueError(f"expected one value, got a {type(raw).__name__}")
        if kind in (int, float, str):
            return kind(raw)
    except (TypeError, ValueError, OverflowError) as error:
        raise SettingsError(f"{where}: {error}") from error
    raise SettingsError(f"{where}: unsupported settings type {kind!r}")


def load_settings(
    cls: type[SettingsT],
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> SettingsT:
    """Build `cls` from defaults, the YAML file, `HEADBITS_*` variables and explicit overrides."""
    environ = os.environ if environ is None else environ
    kinds = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}

    config_file = config_file or environ.get(CONFIG_ENV)
    if config_file:
        path = Path(config_file)
        try:
            document = yaml.safe_load(path.read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise SettingsError(f"config file {path}: {error}") from error
        if not isinstance(document, dict):
            raise SettingsError(f"config file {path}: expected a mapping of setting names")
        unknown = sorted(str(name) for name in set(document) - names)  # keys may be any YAML
        if unknown:
            raise SettingsError(f"config file {path}: unknown settings {unknown}")
        for name, raw in document.items():
            values[name] = _convert(raw, kinds[name], f"{path}: {name}")

    for name in names:
        variable = env_name(name)
        if variable in environ:
            values[name] = _convert(environ[variable], kinds[name], variable)

    for name, raw in (overrides or {}).items():
        if raw is not None:
            values[name] = _convert(raw, kinds[name], "--" + name.replace("_", "-"))
    try:
        return cls(**values)
    except SettingsError as error:  # a check across fields, of values from any of the sources
        if config_file:
            raise SettingsError(f"{error} (settings from config file {config_file}, "
                                "HEADBITS_* variables and options)") from error
        raise


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--option` per field, whose help shows the default and the environment variable."""
    kinds = _field_types(cls)
    group = parser.add_argument_group(f"settings ({cls.__name__})")
    group.add_argument(
        "--config", metavar="YAML", help=f"YAML file of settings (env: {CONFIG_ENV})"
    )
    for field in dataclasses.fields(cls):
        default = field.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = field.metadata.get("help", "")
        group.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            default=None,
            metavar=_metavar(kinds[field.name]),
            help=f"{help_text} (default: {shown}; env: {env_name(field.name)})",
        )


def _metavar(kind: Any) -> str:
    if kind is Secret or Secret in typing.get_args(kind):
        return "SECRET"
    if kind is bool:
        return "BOOL"
    if kind in (int, float):
        return kind.__name__.upper()
    if typing.get_origin(kind) is tuple:
        return "A,B,..."
    return "VALUE"


def settings_from_args(cls: type[SettingsT], args: argparse.Namespace) -> SettingsT:
    names = [f.name for f in dataclasses.fields(cls)]
    return load_settings(
        cls,
        config_file=getattr(args, "config", None),
        overrides={name: getattr(args, name, None) for name in names},
    )
