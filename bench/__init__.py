"""`make bench`: load benchmarks of the gateway against a bare endpoint on the same server stack.

One module per benchmark (`http_bench`, `ws_bench`) built from shared parts: the simulated fleet
(`fleet`), its untimed traffic and reply checks (`agents`, `client`), target processes pinned to a
core (`targets`, `baseline`), the wrk runner for HTTP (`wrk`, `heartbeat.lua`), the WebSocket client
and closed loop (`ws_client`, `ws_load`) and idle-socket memory (`ws_memory`), the gateway's own
counters (`gateway_metrics`), CPU and memory accounting (`procstat`), the optional py-spy profile
(`profile`), machine facts (`machine`) and the report (`report`).
"""
