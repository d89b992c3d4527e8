"""Hypothesis strategies for well-formed OpAMP messages."""

from __future__ import annotations

from hypothesis import strategies as st

from gateway.proto import anyvalue_pb2 as av, opamp_pb2 as pb

UINT64 = st.integers(min_value=0, max_value=2**64 - 1)
_KEYS = st.text(max_size=12)


def _scalar() -> st.SearchStrategy[av.AnyValue]:
    return st.one_of(
        st.builds(lambda v: av.AnyValue(string_value=v), st.text(max_size=20)),
        st.builds(lambda v: av.AnyValue(bool_value=v), st.booleans()),
        st.builds(lambda v: av.AnyValue(int_value=v), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        st.builds(lambda v: av.AnyValue(double_value=v), st.floats(allow_nan=True)),
        st.builds(lambda v: av.AnyValue(bytes_value=v), st.binary(max_size=8)),
        st.just(av.AnyValue()),
    )


def _nest(children: st.SearchStrategy[av.AnyValue]) -> st.SearchStrategy[av.AnyValue]:
    def array(values: list[av.AnyValue]) -> av.AnyValue:
        out = av.AnyValue()
        out.array_value.values.extend(values)
        return out

    def kvlist(pairs: list[tuple[str, av.AnyValue]]) -> av.AnyValue:
        out = av.AnyValue()
        for key, value in pairs:
            out.kvlist_value.values.add(key=key, value=value)
        return out

    return st.one_of(
        st.builds(array, st.lists(children, max_size=3)),
        st.builds(kvlist, st.lists(st.tuples(_KEYS, children), max_size=3)),
    )


any_values = st.recursive(_scalar(), _nest, max_leaves=6)


@st.composite
def descriptions(draw: st.DrawFn) -> pb.AgentDescription:
    desc = pb.AgentDescription()
    for key, value in draw(st.lists(st.tuples(_KEYS, any_values), max_size=4)):
        desc.identifying_attributes.add(key=key, value=value)
    for key, value in draw(st.lists(st.tuples(_KEYS, any_values), max_size=4)):
        desc.non_identifying_attributes.add(key=key, value=value)
    return desc


@st.composite
def healths(draw: st.DrawFn, depth: int = 2) -> pb.ComponentHealth:
    health = pb.ComponentHealth(
        healthy=draw(st.booleans()),
        start_time_unix_nano=draw(UINT64),
        last_error=draw(st.text(max_size=10)),
        status=draw(st.text(max_size=10)),
        status_time_unix_nano=draw(UINT64),
    )
    if depth:
        for name in draw(st.lists(_KEYS, max_size=2, unique=True)):
            health.component_health_map[name].CopyFrom(draw(healths(depth - 1)))
    return health


@st.composite
def agent_to_server(draw: st.DrawFn) -> pb.AgentToServer:
    uid = draw(st.one_of(st.binary(min_size=16, max_size=16), st.binary(max_size=20)))
    msg = pb.AgentToServer(
        instance_uid=uid,
        sequence_num=draw(st.one_of(st.integers(0, 5), UINT64)),
        capabilities=draw(st.one_of(st.integers(0, 0xFFFF), UINT64)),
        flags=draw(st.one_of(st.integers(0, 3), UINT64)),
    )
    if draw(st.booleans()):
        msg.agent_description.CopyFrom(draw(descriptions()))
    if draw(st.booleans()):
        msg.health.CopyFrom(draw(healths()))
    if draw(st.booleans()):
        files = draw(
            st.dictionaries(_KEYS, st.tuples(st.binary(max_size=30), st.text(max_size=10)), max_size=3)
        )
        msg.effective_config.SetInParent()
        for name, (body, content_type) in files.items():
            msg.effective_config.config_map.config_map[name].body = body
            msg.effective_config.config_map.config_map[name].content_type = content_type
    if draw(st.booleans()):
        # Includes values the enum does not name: open enums must survive them.
        msg.remote_config_status.status = draw(st.integers(0, 7))  # type: ignore[assignment]
        msg.remote_config_status.last_remote_config_hash = draw(st.binary(max_size=32))
        msg.remote_config_status.error_message = draw(st.text(max_size=10))
    if draw(st.booleans()):
        msg.agent_disconnect.SetInParent()
    if draw(st.booleans()):
        msg.custom_message.capability = draw(st.text(max_size=10))
        msg.custom_message.data = draw(st.binary(max_size=10))
    return msg
