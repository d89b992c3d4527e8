"""`make bench`: load benchmarks of the gateway against a bare endpoint on the same server stack.

One module per benchmark (`http_bench` now; a WebSocket one can sit beside it) built from shared
parts: the simulated fleet (`fleet`), its untimed traffic and reply checks (`agents`, `client`),
target processes pinned to a core (`targets`, `baseline`), the wrk runner (`wrk`, `heartbeat.lua`),
the gateway's own counters (`gateway_metrics`), CPU accounting (`procstat`), the optional py-spy
profile (`profile`), machine facts (`machine`) and the report (`report`).
"""
