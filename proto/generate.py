#!/usr/bin/env python3
"""Generate the Python gRPC stubs for proto/ragd/v1/ragd.proto.

    python proto/generate.py          # write clients/python/ragd_client/v1/
    python proto/generate.py --check  # regenerate into a temp folder; exit 1 listing stale files

Runs ``grpc_tools.protoc`` (the ``grpcio-tools`` package, pinned in the ``test`` extra so
that the output is reproducible) and writes ``ragd_pb2.py``, ``ragd_pb2.pyi`` (typing stubs)
and ``ragd_pb2_grpc.py`` plus an ``__init__.py`` into ``clients/python/ragd_client/v1/``.

protoc names the module after the proto package (``ragd.v1.ragd_pb2``), which would collide
with the daemon's own ``ragd`` package, so the generated imports and module names are
rewritten to ``ragd_client.v1``. The output depends only on the .proto and the grpcio-tools
version: the same inputs always give byte-identical files.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
PROTO_FILE = "ragd/v1/ragd.proto"  # relative to PROTO_ROOT: this name is recorded in the descriptor
OUT_DIR = REPO / "clients" / "python" / "ragd_client" / "v1"
GENERATED = ("__init__.py", "ragd_pb2.py", "ragd_pb2.pyi", "ragd_pb2_grpc.py")

INIT = '''"""Generated gRPC stubs for ragd.v1 (proto/ragd/v1/ragd.proto).

Do not edit: regenerate with ``python proto/generate.py``.
"""
'''

# protoc's module path -> ours, in imports and in the module name given to the builder.
_REWRITES = (
    (re.compile(r"^from ragd\.v1 import ", re.MULTILINE), "from ragd_client.v1 import "),
    (re.compile(r"^import ragd\.v1\.", re.MULTILINE), "import ragd_client.v1."),
    (re.compile(r"'ragd\.v1\.ragd_pb2'"), "'ragd_client.v1.ragd_pb2'"),
)


def _rewrite(text: str) -> str:
    for pattern, replacement in _REWRITES:
        text = pattern.sub(replacement, text)
    # Normalise line endings and the trailing newline so the output never depends on the platform.
    return text.replace("\r\n", "\n").rstrip("\n") + "\n"


def _protoc(out: Path) -> None:
    """Run grpc_tools.protoc into ``out`` (which receives ragd/v1/*)."""
    try:
        from importlib.resources import files

        from grpc_tools import protoc
    except ImportError:
        sys.exit("generate.py: grpcio-tools is not installed: pip install -e '.[test]'")
    well_known = str(files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO_ROOT / PROTO_FILE),
    ]
    status = protoc.main(args)
    if status != 0:
        sys.exit(f"generate.py: protoc failed with status {status} on {PROTO_ROOT / PROTO_FILE}")


def generate(dest: Path) -> list[Path]:
    """Write the generated files into ``dest``; returns their paths."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ragd-protoc-") as tmp:
        raw = Path(tmp)
        _protoc(raw)
        produced = raw / Path(PROTO_FILE).parent
        written = []
        for name in GENERATED:
            text = INIT if name == "__init__.py" else _rewrite((produced / name).read_text(encoding="utf-8"))
            target = dest / name
            target.write_text(text, encoding="utf-8", newline="\n")
            written.append(target)
    return written


def check(dest: Path = OUT_DIR) -> list[str]:
    """The generated files in ``dest`` that are missing or differ from a fresh generation."""
    with tempfile.TemporaryDirectory(prefix="ragd-stubs-") as tmp:
        fresh = Path(tmp)
        generate(fresh)
        stale = []
        for name in GENERATED:
            current = dest / name
            if not current.is_file() or current.read_bytes() != (fresh / name).read_bytes():
                stale.append(str(current.relative_to(REPO) if current.is_relative_to(REPO) else current))
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed stubs are out of date")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.check:
        stale = check(args.out)
        if stale:
            print("generated stubs are out of date; run `python proto/generate.py`:", file=sys.stderr)
            for path in stale:
                print(f"  {path}", file=sys.stderr)
            return 1
        print("generated stubs are up to date")
        return 0
    for path in generate(args.out):
        print(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
