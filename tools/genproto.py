"""Generate the Python, gRPC and type stubs of proto/quartet/v1 into quartet/v1/.

Run `python tools/genproto.py` after editing a .proto; `--check` exits 1 when the committed
stubs differ from freshly generated ones (the stale-stub test calls it too).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = Path("quartet") / "v1"
INIT_TEXT = '"""Generated protobuf and gRPC stubs of the quartet.v1 contracts (see proto/)."""\n'


def generate(out_root: Path) -> list[Path]:
    """Compile every .proto under proto/quartet/v1 into out_root/quartet/v1; returns the files."""
    from grpc_tools import protoc

    protos = sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT / PACKAGE_DIR}")
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    # mypy-protobuf's plugins live next to this interpreter; protoc looks them up on PATH.
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")
    (out_root / PACKAGE_DIR / "__init__.py").write_text(INIT_TEXT)
    return sorted((out_root / PACKAGE_DIR).iterdir())


def stale_files() -> list[str]:
    """Names of stubs whose committed content differs from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p for p in generate(Path(tmp)) if p.is_file()}
        current_dir = ROOT / PACKAGE_DIR
        current = {
            p.name: p
            for p in current_dir.glob("*")
            if p.is_file() and p.suffix in {".py", ".pyi"}
        } if current_dir.exists() else {}
        names = set(fresh) | set(current)
        return sorted(
            n for n in names
            if n not in fresh or n not in current
            or not filecmp.cmp(fresh[n], current[n], shallow=False)
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed stubs are stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated stubs (run `python tools/genproto.py`): " + ", ".join(stale))
            return 1
        print("generated stubs are up to date")
        return 0
    target = ROOT / PACKAGE_DIR
    if target.exists():
        shutil.rmtree(target)
    files = generate(ROOT)
    print(f"generated {len(files)} files into {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
