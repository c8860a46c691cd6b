"""The general config mechanism: typed dataclass groups -> hierarchical CLI flags -> frozen config.

Why generated flags: OpenRLHF retypes the same ``--ds.*`` block in every script and hands the
trainer an untyped namespace. Here each concern is one frozen dataclass with a docstring under
every field; :func:`build_parser` walks a *job* dataclass (whose fields are groups) and makes one
flag per leaf field, so flag name, type, default and help text cannot drift apart.

Conventions:

- A job field whose type is a group becomes a prefix: ``JobConfig.ds.lora.rank`` is
  ``--ds.lora.rank``. Nested groups nest prefixes.
- A job field marked ``flat_group()`` contributes its fields without a prefix
  (``--optim``, ``--lr_scheduler``).
- ``bool`` fields defaulting to False are ``store_true`` flags; defaulting to True they get a
  ``--no-`` form as well. ``Literal`` types become choices; ``tuple``/``list`` take several values.
- Each group validates itself in ``__post_init__`` by raising :class:`ConfigError` with the
  field name; the parser rewrites it to name the full flag. Cross-group rules live in the job's
  ``__post_init__`` and name flags directly.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, Literal, TypeVar, get_args, get_origin

__all__ = [
    "ConfigError",
    "build_parser",
    "check",
    "config_to_argv",
    "config_to_dict",
    "dict_to_argv",
    "field_docs",
    "flat_group",
    "flatten_mapping",
    "from_dict",
    "group_under",
    "parse_config",
    "parse_config_or_raise",
]

T = TypeVar("T")

_PREFIX = "quartet_prefix"


class ConfigError(ValueError):
    """A config value is invalid. ``field`` is the field (or full flag) it concerns."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}")


def flat_group(cls: type) -> Any:
    """A job field whose group's flags carry no prefix (OpenRLHF keeps ``--optim`` flat)."""
    return dataclasses.field(default_factory=cls, metadata={_PREFIX: ""})


def group_under(cls: type, prefix: str) -> Any:
    """A job field whose group shares another prefix.

    Why: OpenRLHF puts the DPO ``beta`` under ``--model.*``, but the PPO actor should receive
    a ``ModelConfig`` about loading a model only; the objective lives in its own group that
    happens to use the same flag prefix.
    """
    return dataclasses.field(default_factory=cls, metadata={_PREFIX: prefix})


def _sub_prefix(f: dataclasses.Field, prefix: str) -> str:
    if _PREFIX in f.metadata:
        p = f.metadata[_PREFIX]
        return f"{prefix}{p}." if p else prefix
    return f"{prefix}{f.name}."


def check(condition: bool, field: str, message: str) -> None:
    """Raise :class:`ConfigError` for ``field`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(field, message)


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of dataclass ``cls`` (vLLM's convention)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_group(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _scalar_parser(tp: Any, optional: bool) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        if tp is bool:
            low = text.lower()
            if low in ("1", "true", "yes"):
                return True
            if low in ("0", "false", "no"):
                return False
            raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
        return tp(text)

    parse.__name__ = getattr(tp, "__name__", "value")
    return parse


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _add_flag(
    parser: argparse._ActionsContainer, flag: str, dest: str, tp: Any, default: Any, doc: str
) -> None:
    tp, optional = _strip_optional(tp)
    origin = get_origin(tp)
    kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS}
    shown = f"(default: {default!r})"
    # argparse %-formats help strings: a literal "%" in a docstring ("~20% faster") must
    # be doubled or every --help of the command raises.
    help_text = f"{doc} {shown}".strip().replace("%", "%%")
    if tp is bool and not optional:
        if default:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["action"] = "store_true"
        parser.add_argument(flag, help=help_text, **kwargs)
        return
    if origin is Literal:
        choices = list(get_args(tp))
        kwargs["type"] = _scalar_parser(type(choices[0]), optional)
        kwargs["choices"] = choices + ([None] if optional else [])
        kwargs["metavar"] = "{" + ",".join(str(c) for c in choices) + "}"
    elif origin in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        item = args[0] if args else str
        kwargs["type"] = _scalar_parser(item, False)
        fixed = origin is tuple and Ellipsis not in get_args(tp)
        kwargs["nargs"] = len(get_args(tp)) if fixed else "+"
    else:
        kwargs["type"] = _scalar_parser(tp, optional)
    kwargs.setdefault("metavar", getattr(kwargs["type"], "__name__", "value").upper())
    parser.add_argument(flag, help=help_text, **kwargs)


def _walk(cls: type, prefix: str) -> typing.Iterator[tuple[str, str, Any, dataclasses.Field, type]]:
    """Yield (flag name, dotted path, type, field, owning class) for every leaf field."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        tp = hints[f.name]
        path = f"{prefix}{f.name}"
        if _is_group(tp):
            yield from _walk(tp, _sub_prefix(f, prefix))
        else:
            yield path, path, tp, f, cls


def build_parser(
    job_cls: type,
    prog: str | None = None,
    description: str | None = None,
    renamed: dict[str, str] | None = None,
) -> argparse.ArgumentParser:
    """An argparse parser with one flag per leaf field of ``job_cls`` (a dataclass of groups).

    ``renamed`` maps retired flags (``--pretrain``) to their replacement; using one is an error
    that names the new flag, rather than "unrecognized arguments".
    """
    parser = _Parser(prog=prog, description=description or inspect.getdoc(job_cls))
    parser.renamed = dict(renamed or {})
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag, path, tp, f, owner in _walk(job_cls, ""):
        section = path.rsplit(".", 1)[0] if "." in path else "general"
        if section not in groups:
            groups[section] = parser.add_argument_group(section)
        doc = field_docs(owner).get(f.name, "")
        _add_flag(groups[section], f"--{flag}", path, tp, _default_of(f), doc)
    # Launchers pass this (deepspeed: --local_rank=N); the env var carries the same value.
    parser.add_argument("--local_rank", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


class _Parser(argparse.ArgumentParser):
    renamed: dict[str, str]

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        import sys

        argv = list(sys.argv[1:] if args is None else args)
        for token in argv:
            name = token.split("=", 1)[0]
            if name in getattr(self, "renamed", {}):
                self.error(
                    f"{name} was removed; use {self.renamed[name]} instead "
                    "(hierarchical flags, see docs/trainers.md)"
                )
        return super().parse_known_args(argv, namespace)


def _build(cls: type[T], values: dict[str, Any], prefix: str) -> T:
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        path = f"{prefix}{f.name}"
        if _is_group(tp):
            kwargs[f.name] = _build(tp, values, _sub_prefix(f, prefix))
        elif path in values:
            value = values[path]
            if get_origin(_strip_optional(tp)[0]) is tuple and isinstance(value, list):
                value = tuple(value)
            kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if err.field.startswith("--"):
            raise
        raise ConfigError(f"--{prefix}{err.field}", err.reason) from None


def parse_config(
    job_cls: type[T],
    argv: Sequence[str] | None = None,
    prog: str | None = None,
    renamed: dict[str, str] | None = None,
) -> T:
    """Parse ``argv`` into a validated, frozen ``job_cls``; exits with a usage error if invalid."""
    parser = build_parser(job_cls, prog=prog, renamed=renamed)
    ns = parser.parse_args(argv)
    values = {k: v for k, v in vars(ns).items() if k != "local_rank"}
    try:
        return _build(job_cls, values, "")
    except ConfigError as err:
        parser.error(str(err))
        raise  # unreachable; parser.error exits


def from_dict(job_cls: type[T], values: dict[str, Any]) -> T:
    """Build ``job_cls`` from ``{"ds.zero_stage": 2, ...}`` (dotted flag names, no dashes)."""
    known = {path for _, path, *_ in _walk(job_cls, "")}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"--{unknown[0]}", "unknown option")
    return _build(job_cls, dict(values), "")


def flatten_mapping(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"actor": {"learning_rate": 1e-6}}`` -> ``{"actor.learning_rate": 1e-6}`` (YAML files
    may nest groups or use dotted keys; both mean the same flag)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{str(key).removeprefix('--')}"
        if isinstance(value, dict):
            out.update(flatten_mapping(value, f"{name}."))
        else:
            out[name] = value
    return out


def dict_to_argv(job_cls: type, values: dict[str, Any]) -> list[str]:
    """Flags equivalent to ``{"ds.zero_stage": 2, "ds.packing_samples": True, ...}``.

    Going through the parser (rather than building dataclasses directly) gives YAML configs
    and service requests exactly the CLI's parsing and validation.
    """
    actions = {a.dest: a for a in build_parser(job_cls)._actions}
    argv: list[str] = []
    for key, value in values.items():
        if key not in actions:
            raise ConfigError(f"--{key}", "unknown option")
        if value is None:
            continue
        if isinstance(value, bool):
            if isinstance(actions[key], argparse.BooleanOptionalAction):
                argv.append(f"--{key}" if value else f"--no-{key}")
            elif value:
                argv.append(f"--{key}")
        elif isinstance(value, list | tuple):
            if value:
                argv += [f"--{key}", *[str(v) for v in value]]
        else:
            argv += [f"--{key}", repr(value) if isinstance(value, float) else str(value)]
    return argv


def parse_config_or_raise(job_cls: type[T], argv: Sequence[str]) -> T:
    """Like :func:`parse_config`, but raises :class:`ConfigError` instead of exiting (for
    servers that receive a configuration in a request)."""
    import contextlib
    import io

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse_config(job_cls, list(argv), prog="config")
    except SystemExit:
        message = err.getvalue().strip().splitlines()
        text = message[-1].removeprefix("config: error: ") if message else "invalid config"
        raise ConfigError("config", text) from None


def config_to_argv(cfg: Any) -> list[str]:
    """Flags that parse back into ``cfg`` (used to start a service with its own config)."""
    return dict_to_argv(type(cfg), config_to_dict(cfg))


def config_to_dict(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a config to ``{"ds.zero_stage": 2, ...}`` for logging and checkpoints."""
    out: dict[str, Any] = {}
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        value = getattr(cfg, f.name)
        if _is_group(hints[f.name]):
            out.update(config_to_dict(value, _sub_prefix(f, prefix)))
        else:
            out[f"{prefix}{f.name}"] = list(value) if isinstance(value, tuple) else value
    return out
