"""Where a service may write and what code it may run: paths confined to configured roots.

`Save` writes (and `Load` reads) only under the service's `--save-root`; a StartRun
config's output directory only under the coordinator's `--runs-root`; reward code named in
a StartRun config runs only from a directory given with `--allowed-reward-dir`. Paths are
resolved first (`..` and symlinks), so neither can step outside.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from quartet.serving.errors import InvalidArgument, PermissionDenied


def _resolve(path: Path, field: str) -> Path:
    try:
        return path.resolve()
    except (ValueError, OSError) as exc:  # NUL bytes, too-long names, symlink loops
        raise InvalidArgument(f"{field}: not a usable path ({exc})") from None


def is_under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def confine(path: str | os.PathLike, root: str | os.PathLike, field: str) -> Path:
    """`path` resolved (relative paths against `root`); refused unless it lies under root."""
    root_p = Path(root).resolve()
    p = Path(path)
    resolved = _resolve(p if p.is_absolute() else root_p / p, field)
    if not is_under(resolved, root_p):
        raise PermissionDenied(f"{field}: {path} is outside this service's root {root_p} "
                               "(start it with a root that contains it)")
    return resolved


def allowed_file(path: str | os.PathLike, dirs: Sequence[str | os.PathLike],
                 field: str, flag: str) -> Path:
    """`path` resolved; refused unless it lies in one of `dirs` (none: nothing allowed)."""
    resolved = _resolve(Path(path), field)
    roots = [Path(d).resolve() for d in dirs]
    if not any(is_under(resolved, r) for r in roots):
        where = ", ".join(map(str, roots)) or "none configured"
        raise PermissionDenied(f"{field}: {path} is not in a directory this service may run "
                               f"code from ({where}); allow one with {flag} DIR")
    return resolved
