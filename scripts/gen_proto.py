"""Generate gateway/proto/*_pb2.py and .pyi from proto/opamp/v1 with grpcio-tools' bundled protoc.

`python scripts/gen_proto.py` rewrites the committed files; `--check` regenerates into a temporary
directory and exits 1 if the committed files differ (the test suite runs that).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = ROOT / "gateway" / "proto"
SOURCES = ("opamp/v1/anyvalue.proto", "opamp/v1/opamp.proto")
# protoc writes `from opamp.v1 import anyvalue_pb2`; our generated modules live in gateway.proto.
_IMPORT = re.compile(r"^from opamp\.v1 import anyvalue_pb2 as", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc  # dev-time dependency only

    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}", f"--pyi_out={tmp}", *SOURCES]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        written = []
        for produced in sorted((Path(tmp) / "opamp" / "v1").iterdir()):
            text = _IMPORT.sub("from gateway.proto import anyvalue_pb2 as", produced.read_text())
            target = out_dir / produced.name
            target.write_text(text)
            written.append(target)
        return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed files are stale")
    args = parser.parse_args(argv)
    if not args.check:
        for path in generate(OUT):
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stale = [
            path.name
            for path in generate(Path(tmp))
            if not (OUT / path.name).exists() or (OUT / path.name).read_text() != path.read_text()
        ]
    if stale:
        print(f"generated protobuf code is out of date: {', '.join(stale)}; run `make proto`")
        return 1
    print("generated protobuf code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
