"""Regenerate protos/*_pb2*.py(i) from protos/*.proto with grpcio-tools (the one way to do it)."""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generate(out_dir: Path = ROOT) -> list[Path]:
    """Compile every .proto under protos/ into ``out_dir/protos``; return the files written."""
    sources = sorted(PROTOS.glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    for source in sources:
        args = [
            "grpc_tools.protoc",
            f"-I{ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(source.relative_to(ROOT)),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {source.name}")
    return sorted((out_dir / "protos").glob("*_pb2*.py*"))


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for path in generate(target):
        print(path.relative_to(target))
