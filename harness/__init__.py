"""What tests, `bench` and `loadtest` share to drive real gateways from outside.

- `process`: one child process with its log, stopped by SIGTERM with a clean-exit check.
- `gateway`: the `opamp-gateway serve` launcher (environment scrubbed of `OPAMP_GATEWAY_*`, free
  ports, optional shared SQLite file and Redis URL, ready by `/readyz` or by "bus up").
- `redis_server`: the redis-server launcher (loopback, no persistence).
- `ports`: free loopback ports. `waiting`: polling a condition with a deadline.
- `admin`: one JSON request to a gateway's admin API, without third-party clients.
- `procstat`: CPU time and resident memory of processes and cores, from /proc.
- `machine`: a description of the machine and software a measurement ran on.
- `es_double`: a wire-level double of the Elasticsearch endpoints the gateway uses.
- `records`: agent records as the engine stores them, to fill a store without running agents.
- `agent`: the simulated agent's protocol model (what it sends, how it answers a reply), with
  `Look` for what it reports about itself.

Nothing in `gateway/` imports it, and it is not part of the shipped wheel.
"""
