"""uid_str is the canonical UUID string of a 16-byte instance_uid, as the uuid module writes it."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, strategies as st

from gateway.fleet.agent import uid_bytes, uid_str


@given(st.binary(min_size=16, max_size=16))
def test_uid_str_is_the_uuid_modules_string(uid: bytes) -> None:
    assert uid_str(uid) == str(uuid.UUID(bytes=uid))
    assert uid_bytes(uid_str(uid)) == uid


@pytest.mark.parametrize("size", [0, 15, 17])
def test_uid_str_refuses_other_lengths(size: int) -> None:
    with pytest.raises(ValueError):
        uid_str(bytes(size))
