from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.protobuf.internal import api_implementation

from gateway.proto import opamp_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_matches_proto_sources() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_upb_backend() -> None:
    assert api_implementation.Type() == "upb"


def test_proto_has_every_message_and_enum_of_the_spec() -> None:
    assert len(pb.DESCRIPTOR.message_types_by_name) == 37
    assert len(pb.DESCRIPTOR.enum_types_by_name) == 10
    assert pb.DESCRIPTOR.package == "opamp.proto.v1"
    fields = {f.name: f.number for f in pb.AgentToServer.DESCRIPTOR.fields}
    assert fields["connection_settings_status"] == 15 and fields["flags"] == 10
    assert {f.name: f.number for f in pb.ServerToAgent.DESCRIPTOR.fields}["custom_message"] == 11
    assert pb.AgentCapabilities_ReportsConnectionSettingsStatus == 0x8000


def test_non_upb_backend_warns_loudly() -> None:
    code = (
        "import logging; logging.basicConfig()\n"
        "from gateway.services import protobuf_backend; protobuf_backend()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python", "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" in result.stderr and "not upb" in result.stderr
