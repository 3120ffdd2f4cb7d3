"""Command-line options generated from the typed configs, so the two cannot drift apart.

Every field of a config model becomes an option with the field's name (``lr`` ->
``--lr``, nested ``train.epochs`` -> ``--train.epochs``), its default and description in
the help, and its choices when it is a ``Literal``; booleans get ``--x/--no-x``; an
optional number takes ``none`` (``--patience none``). Values stay strings until the
model validates them, so a bad value is reported by pydantic's
own rules, with the option's name. ``--config FILE.yaml`` supplies any part of the model;
options given on the command line win; ``--print-config`` shows the result.

A small generator over ``model_fields`` rather than a framework: the CLI keeps argparse
(fast ``--help``, no heavy import before the arguments are checked), and the models stay
the single source of names, types, defaults and help.
"""

from __future__ import annotations

import argparse
import typing
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from histo_core.config import CREDENTIALS_IN_URL


class ConfigError(ValueError):
    """A config that does not validate; the message names each option and the rule."""


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _default_text(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def add_config_options(parser: argparse.ArgumentParser, model: type[BaseModel], prefix: str = "",
                       aliases: dict[str, str] | None = None) -> None:
    """One option per field of ``model`` (recursively), in a help group per model."""
    aliases = aliases or {}
    title = f"{prefix.rstrip('.') or model.__name__} options"
    group = parser.add_argument_group(title, (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "))
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        if _is_model(field.annotation):
            add_config_options(parser, field.annotation, f"{path}.", aliases)
            continue
        flags = [f"--{path.replace('_', '-')}"] + ([aliases[path]] if path in aliases else [])
        text = f"{field.description or ''} (default: {_default_text(field)})".strip()
        kwargs: dict[str, Any] = {"dest": path, "default": argparse.SUPPRESS, "help": text.replace("%", "%%")}
        if field.annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(field.annotation) is Literal:
            kwargs["choices"] = typing.get_args(field.annotation)
        else:
            kwargs["metavar"] = name.upper()
            if _optional_number(field.annotation):
                kwargs["type"] = _none_or_text
        group.add_argument(*flags, **kwargs)


def _optional_number(annotation: Any) -> bool:
    """``int | None`` and the like: "none" can mean nothing but None there (for an optional
    text field it could be a name, so it stays text)."""
    kinds = set(typing.get_args(annotation))
    return type(None) in kinds and kinds - {type(None)} <= {int, float}


def _none_or_text(value: str) -> str | None:
    """``--patience none`` for None, as the help's "(default: none)" writes it; the rest
    stays text for pydantic to validate."""
    return None if value.strip().lower() in ("none", "null") else value


def add_config_file_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE.yaml",
                        help="read options from this YAML file (the config's fields; command-line options win)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit, running nothing")


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def _paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    paths = set()
    for name, field in model.model_fields.items():
        paths |= _paths(field.annotation, f"{prefix}{name}.") if _is_model(field.annotation) else {prefix + name}
    return paths


def resolve_config(model: type[BaseModel], args: argparse.Namespace, prefix: str = "",
                   section: str = "") -> Any:
    """``model`` from the ``section`` of ``--config`` (a dotted key; "" for all of it), then
    the options given under ``prefix``, validated."""
    tree: dict[str, Any] = {}
    config_file = getattr(args, "config", None)
    if config_file is not None:
        tree.update(_read_yaml(config_file, section))
    given = vars(args)
    for path in _paths(model):
        if prefix + path in given:
            _set(tree, path, given[prefix + path])
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(map(partial(_problem, prefix), exc.errors()))
        raise ConfigError(f"invalid options: {problems}" + (f" (with {config_file})" if config_file else "")) \
            from None


def _problem(prefix: str, error: Any) -> str:
    """``--lr: Input should be greater than 0 (got '-1')``; a rule over several fields
    (a model validator) has no option to name and no single value to show."""
    if not error["loc"]:
        return error["msg"].removeprefix("Value error, ")
    option = f"--{prefix}{'.'.join(map(str, error['loc'])).replace('_', '-')}"
    shown = error["type"] not in ("missing", CREDENTIALS_IN_URL)
    return f"{option}: {error['msg']}" + (f" (got {error['input']!r})" if shown else "")


def _read_yaml(path: Path, section: str) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    for key in filter(None, section.split(".")):
        tree = tree.get(key, {}) if isinstance(tree, dict) else {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields, found {type(tree).__name__}")
    return tree


def print_config(config: BaseModel | dict[str, BaseModel]) -> None:
    """The resolved config as YAML, in the shape ``--config`` reads."""
    import yaml

    tree = ({k: v.model_dump(mode="json") for k, v in config.items()} if isinstance(config, dict)
            else config.model_dump(mode="json"))
    print(yaml.safe_dump(tree, sort_keys=False), end="")
