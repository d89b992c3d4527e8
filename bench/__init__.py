"""`make bench`: load benchmarks of the gateway against a bare endpoint on the same server stack.

One module per benchmark (`http_bench` now; a WebSocket one can sit beside it) built from shared
parts: the simulated fleet (`fleet`), target processes pinned to a core (`targets`), a small HTTP
client (`client`), the wrk runner (`wrk`), machine facts (`machine`) and the report (`report`).
"""
