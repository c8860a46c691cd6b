"""No dead flags: every flag of every CLI is read by the code that CLI runs, or rejected.

How it works (and what it can and cannot see):

1. The flags of each CLI come from its real parser (`train_sft`, `train_rm`, `train_dpo`,
   `train_kto`, `train_kd`, `quartet ppo`, `quartet serve <role>`); a flag's *field* is the
   last part of its name (`--ckpt.max_mem` -> `max_mem`, `--max-message-mb` ->
   `max_message_mb`).
2. The code a CLI runs is every module reachable from its entry module through `import`
   statements (also those inside functions) within `quartet/` and `services/`. Importing
   `a.b.c` follows `a/b/c.py` only, not the re-exports of the package `a/__init__.py`, so
   `train_dpo` does not reach `sft_trainer.py`. `quartet ppo` also reaches the role servers
   it starts as processes (`services/<role>/server.py`).
3. A flag is *read* when its field name is read as an attribute (`x.max_mem`,
   `getattr(x, "max_mem")`) in one of those modules. Reads inside `__post_init__` of the
   config modules are validation, not use, and do not count.
4. A flag that is not read must be *rejected*: parsing it with a non-default value must fail
   with an error that names the flag (and says why, by convention).
5. Anything else is a dead flag and fails the test.

The name match is a heuristic: a field named like an attribute of something else in the same
modules (`dataset`, `path`) counts as read. It does catch a field that nothing reachable reads
at all (`--ckpt.max_mem` before it pruned, `--model.aux_loss_coef` in train_rm).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
from functools import cache
from pathlib import Path

import pytest

from quartet.config.base import build_parser
from quartet.config.jobs import DPOJobConfig, RMJobConfig, SFTJobConfig
from quartet.config.methods import KDJobConfig, KTOJobConfig
from quartet.config.renamed import RENAMED_FLAGS, RENAMED_PPO_FLAGS
from quartet.roles import ROLES, server_module
from services.coordinator.config import PPOJobConfig

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("quartet", "services")
CONFIG_MODULES = {"quartet/config", "services/coordinator/config.py", "quartet/ppo/role_config.py"}
ROLE_SERVERS = [f"services/{r}/server.py" for r in ROLES if r != "coordinator"]
# The required arguments each CLI needs before a flag under test can be judged.
BASE_ARGS = {
    "trainer": ["--model.model_name_or_path", "m", "--data.dataset", "d.jsonl"],
    "ppo": ["--actor.model_name_or_path", "m", "--data.dataset", "d.jsonl", "--reward.func",
            "r.py"],
}


def _module_file(name: str) -> Path | None:
    base = ROOT / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[Path]:
    out: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name.split(".")[0] not in PACKAGES:
                continue
            target = _module_file(name)
            if target is not None and not (target.name == "__init__.py"
                                           and name != node_module(node)):
                out.add(target)
    return out


def node_module(node: ast.AST) -> str | None:
    return getattr(node, "module", None)


@cache
def reachable(roots: tuple[str, ...]) -> frozenset[Path]:
    seen: set[Path] = set()
    todo = [ROOT / r for r in roots]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(_imports(path) - seen)
    return frozenset(seen)


def _is_config_module(path: Path) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == c or rel.startswith(c + "/") for c in CONFIG_MODULES)


@cache
def attribute_reads(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    if _is_config_module(path):
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "__post_init__":
                skip.update(id(n) for n in ast.walk(node))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            names.add(node.attr)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "getattr" and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            names.add(node.args[1].value)
    return frozenset(names)


def reads(roots: tuple[str, ...]) -> set[str]:
    return set().union(*(attribute_reads(p) for p in reachable(roots)))


def _flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions  # noqa: SLF001 - argparse has no public listing
            if a.option_strings and not isinstance(a, argparse._HelpAction)
            and a.dest != "local_rank"]


_CANDIDATES = ("3", "0.37", "x", "7", "-1", "0")


def _non_default(action: argparse.Action, default) -> list[str]:
    """Arguments that set `action` to a valid value other than `default`."""
    flag = next(o for o in action.option_strings if not o.startswith("--no-"))
    if action.nargs == 0:  # store_true / store_false / --x / --no-x pairs
        if any(o.startswith("--no-") for o in action.option_strings) and default:
            return [f"--no-{flag[2:]}"]
        return [flag]
    if action.choices:
        values = [str(c) for c in action.choices if c != default]
    else:
        convert = action.type or str
        values = []
        for text in _CANDIDATES:
            try:
                value = convert(text)
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                continue
            if value != default and not (isinstance(default, tuple | list) and value in default):
                values.append(text)
    count = action.nargs if isinstance(action.nargs, int) else 1
    return [flag] + [values[0]] * count


def _rejected(parser: argparse.ArgumentParser, base: list[str], action, default) -> bool:
    """Parsing a valid non-default value fails with an error line naming the flag (a type or
    choice error is not a rejection: the value was invalid, not the flag)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(base + _non_default(action, default))
        except SystemExit:
            # argparse prints the whole usage first; only the error line counts
            errors = [ln for ln in err.getvalue().splitlines()
                      if "error:" in ln and "invalid" not in ln]
            return any(o.lstrip("-") in ln for ln in errors for o in action.option_strings)
    return False


def _typed_parser(job_cls, renamed=None) -> argparse.ArgumentParser:
    from quartet.config.base import parse_config

    parser = build_parser(job_cls, renamed=renamed)

    class Checked(argparse.ArgumentParser):
        """Parses then builds the config, so validation errors count as rejections."""

        def parse_args(self, args=None, namespace=None):
            return parse_config(job_cls, args, renamed=renamed)

    checked = Checked()
    checked._actions = parser._actions  # noqa: SLF001
    return checked


def _field(action: argparse.Action) -> str:
    name = next(o for o in action.option_strings if not o.startswith("--no-"))
    return name.lstrip("-").split(".")[-1].replace("-", "_")


def dead_flags(parser, roots: tuple[str, ...], base: list[str],
               defaults: dict | None = None) -> list[str]:
    read = reads(roots)
    dead = []
    for a in _flags(parser):
        default = (defaults or {}).get(a.dest, a.default)
        if _field(a) not in read and not _rejected(parser, base, a, default):
            dead.append(a.option_strings[0])
    return dead


def _defaults(job_cls, base: list[str]) -> dict:
    from quartet.config.base import config_to_dict, parse_config

    return {k: tuple(v) if isinstance(v, list) else v
            for k, v in config_to_dict(parse_config(job_cls, base)).items()}


TRAINERS = {
    "train_sft": (SFTJobConfig, "quartet/cli/train_sft.py", []),
    "train_rm": (RMJobConfig, "quartet/cli/train_rm.py", []),
    "train_dpo": (DPOJobConfig, "quartet/cli/train_dpo.py", []),
    "train_kto": (KTOJobConfig, "quartet/cli/train_kto.py", []),
    "train_kd": (KDJobConfig, "quartet/cli/train_kd.py", ["--teacher.model_name_or_path", "t"]),
}


@pytest.mark.parametrize("cli", sorted(TRAINERS))
def test_trainer_flags_are_read_or_rejected(cli):
    job_cls, entry, extra = TRAINERS[cli]
    parser = _typed_parser(job_cls, RENAMED_FLAGS)
    base = BASE_ARGS["trainer"] + extra
    assert dead_flags(parser, (entry,), base, _defaults(job_cls, base)) == []


def test_ppo_flags_are_read_or_rejected():
    parser = _typed_parser(PPOJobConfig, RENAMED_PPO_FLAGS)
    roots = ("services/coordinator/job.py", *ROLE_SERVERS)
    base = BASE_ARGS["ppo"]
    assert dead_flags(parser, roots, base, _defaults(PPOJobConfig, base)) == []


@pytest.mark.parametrize("role", [r for r in ROLES])
def test_serve_flags_are_read_or_rejected(role):
    module = server_module(role)
    parser = argparse.ArgumentParser()
    for flag in ("--host", "--port", "--max-message-mb", "--port-file"):
        parser.add_argument(flag)  # quartet.cli.main.serve adds these to every role
    module.add_arguments(parser)
    roots = ("quartet/cli/main.py", f"services/{role}/server.py")
    assert dead_flags(parser, roots, []) == []
    role_cfg = getattr(module, "ROLE_CONFIG", None)
    if role_cfg is not None:
        base = ["--model.model_name_or_path", "m"]
        assert dead_flags(_typed_parser(role_cfg), roots, base, _defaults(role_cfg, base)) == []


def test_the_check_catches_a_dead_flag():
    """A flag that nothing reads and nothing rejects is reported."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--surely_unread_option_xyz", type=int, default=1)
    assert dead_flags(parser, ("quartet/cli/train_sft.py",), []) == ["--surely_unread_option_xyz"]


@pytest.mark.parametrize("old, new", sorted(RENAMED_PPO_FLAGS.items()))
def test_old_ppo_flags_name_their_replacement(old, new, capsys):
    from quartet.config.base import parse_config

    with pytest.raises(SystemExit):
        parse_config(PPOJobConfig, BASE_ARGS["ppo"] + [old, "1"], renamed=RENAMED_PPO_FLAGS)
    assert new.split()[0] in capsys.readouterr().err


@pytest.mark.parametrize("job_cls, args, why", [
    (RMJobConfig, ["--model.aux_loss_coef", "0.01"], "ForCausalLM"),
    (SFTJobConfig, ["--ds.ring_attn_size", "2"], "RingAttention"),
    (DPOJobConfig, ["--ds.ring_attn_head_stride", "2"], "RingAttention"),
    (SFTJobConfig, ["--data.chosen_key", "c"], "preference pairs"),
    (DPOJobConfig, ["--data.output_key", "o"], "no single --data.output_key"),
    (PPOJobConfig, ["--data.max_len", "64"], "--rollout.prompt_max_len"),
    (PPOJobConfig, ["--data.output_key", "o"], "samples the responses"),
])
def test_rejections_say_why(job_cls, args, why, capsys):
    from quartet.config.base import parse_config

    base = BASE_ARGS["ppo" if job_cls is PPOJobConfig else "trainer"]
    with pytest.raises(SystemExit):
        parse_config(job_cls, base + args)
    err = capsys.readouterr().err
    assert args[0] in err and why in err
