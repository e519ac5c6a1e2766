"""The generated gRPC code matches the .proto it is committed beside."""

from __future__ import annotations

import sys
from pathlib import Path

import gen_protos

GENERATED = [
    f"{stem}{suffix}"
    for stem in ("coordinator", "admin")
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
]


def test_committed_generated_code_matches_the_proto(tmp_path: Path):
    gen_protos.generate(tmp_path)
    committed = gen_protos.PROTO_ROOT / "twostep" / "v1"
    for name in GENERATED:
        fresh = (tmp_path / "twostep" / "v1" / name).read_text()
        assert (committed / name).read_text() == fresh, (
            f"{name} is stale: run `{Path(sys.executable).name} scripts/gen_protos.py`"
        )
