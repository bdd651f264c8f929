"""Regenerate the Python stubs of the fedtrust wire protocol.

Runs `grpc_tools.protoc` on every `protos/fedtrust/v1/*.proto` with `-I protos`,
so the generated modules import each other as `fedtrust.v1.<name>_pb2` (the
package `fedtrust.v1` maps to `protos/fedtrust/v1/`). Writes `*_pb2.py`,
`*_pb2_grpc.py` and `*_pb2.pyi` next to the sources, or under `--out DIR`
(then as `DIR/fedtrust/v1/...`; `tests/test_protos.py` uses that to check the
committed stubs are current).

    python protos/generate.py [--out DIR]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_PACKAGE = Path("fedtrust") / "v1"
#: generated file suffixes, per .proto stem
SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


def proto_files() -> list[Path]:
    """The .proto sources, relative to `protos/`, in a stable order."""
    return sorted(p.relative_to(PROTO_ROOT) for p in (PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))


def generated_files() -> list[Path]:
    """The generated stub paths, relative to the output root."""
    return [p.with_suffix("").parent / (p.stem + s) for p in proto_files() for s in SUFFIXES]


def generate(out: Path) -> list[Path]:
    """Run protoc into `out`; returns the written files (relative to `out`)."""
    import grpc_tools
    from grpc_tools import protoc  # test-only dependency; imported lazily

    out.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--pyi_out={out}",
        *(str(PROTO_ROOT / p) for p in proto_files()),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit status {rc}; see the messages above")
    return generated_files()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=PROTO_ROOT,
        help="output root (default: protos/, i.e. next to the .proto files)",
    )
    ns = parser.parse_args(argv)
    for path in generate(ns.out):
        print(ns.out / path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
