"""The checked-in generated protobuf code is what the one generating script makes now."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path):
    (tmp_path / "protos").mkdir()

    written = load_generator().generate(tmp_path)

    assert written, "the generator wrote nothing"
    for path in written:
        checked_in = ROOT / "protos" / path.name
        assert checked_in.exists(), f"{path.name} is generated but not checked in"
        assert checked_in.read_text() == path.read_text(), (
            f"protos/{path.name} is stale: run `make protos` and commit the result"
        )
    generated = {p.name for p in written}
    stale = {p.name for p in (ROOT / "protos").glob("*_pb2*.py*")} - generated
    assert not stale, f"generated files with no .proto source: {stale}"
