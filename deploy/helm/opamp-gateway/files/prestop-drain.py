# preStop hook of the gateway container, run as `python -c <this file> <request timeout seconds>`.
# Asks the gateway to drain (POST /api/v1/drain on the admin port: it stops being ready and closes its
# WebSockets gradually, telling each agent when to retry), then waits the drain window so SIGTERM
# finds few connections left. It waits even when the request fails: the wait also covers the time
# Kubernetes takes to remove the pod from Service endpoints and load balancers.
import os
import sys
import time
import urllib.request

timeout = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
port = os.environ.get("OPAMP_GATEWAY_ADMIN_PORT", "4321")
drain_seconds = float(os.environ.get("OPAMP_GATEWAY_DRAIN_SECONDS", "30"))
request = urllib.request.Request(
    f"http://127.0.0.1:{port}/api/v1/drain",
    data=b"{}",
    method="POST",
    headers={"Content-Type": "application/json"},  # the admin port refuses other bodies (415)
)
token_file = os.environ.get("OPAMP_GATEWAY_ADMIN_TOKEN_FILE")
started = time.monotonic()
try:
    if token_file:
        with open(token_file, encoding="utf-8") as f:
            request.add_header("Authorization", "Bearer " + f.read().strip())
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never send it via HTTP_PROXY
    with no_proxy.open(request, timeout=timeout) as response:
        print(f"drain requested: HTTP {response.status}", flush=True)
except Exception as error:  # the wait below matters more than the request
    print(f"drain request failed: {error}", flush=True)
time.sleep(max(0.0, drain_seconds - (time.monotonic() - started)))
