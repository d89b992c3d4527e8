#!/usr/bin/env bash
# `make test-es`: the store contract, migrate and Elasticsearch tests against the official
# Elasticsearch 9 container, as a production cluster runs it: security on, single-node discovery,
# and an API key created for the run (the suite authenticates with it, never as the superuser).
# Needs Docker. ES_IMAGE overrides the image (e.g. a later 9.x).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${ES_IMAGE:-docker.elastic.co/elasticsearch/elasticsearch:9.1.5}"
NAME="opamp-gateway-test-es-$$"
PASSWORD="$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
PORT="${ES_PORT:-9200}"
URL="http://127.0.0.1:${PORT}"

cleanup() { docker rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT

# Security stays on (authentication, API keys); TLS on the HTTP layer is off so the tests can reach
# it on loopback without the container's generated CA. The heap is small: the tests index little.
docker run -d --name "$NAME" -p "127.0.0.1:${PORT}:9200" \
  -e discovery.type=single-node \
  -e xpack.security.enabled=true \
  -e xpack.security.http.ssl.enabled=false \
  -e ELASTIC_PASSWORD="$PASSWORD" \
  -e ES_JAVA_OPTS="-Xms1g -Xmx1g" \
  "$IMAGE" >/dev/null

echo "waiting for Elasticsearch at $URL"
for _ in $(seq 1 120); do
  if curl -fsS -u "elastic:$PASSWORD" "$URL/_cluster/health?wait_for_status=yellow&timeout=1s" >/dev/null 2>&1; then
    break
  fi
  sleep 2
done
curl -fsS -u "elastic:$PASSWORD" "$URL/_cluster/health?wait_for_status=yellow&timeout=30s" >/dev/null

# An API key with only what the gateway and migrate need, on the test aliases' indices.
KEY="$(curl -fsS -u "elastic:$PASSWORD" -H 'Content-Type: application/json' -X POST "$URL/_security/api_key" -d '{
  "name": "opamp-gateway-tests",
  "expiration": "1d",
  "role_descriptors": {
    "opamp_gateway_tests": {
      "cluster": ["monitor", "manage_index_templates"],
      "indices": [{"names": ["opamp-test-*"], "privileges": ["all"]}]
    }
  }
}' | python3 -c 'import json, sys; print(json.load(sys.stdin)["encoded"])')"

export OPAMP_GATEWAY_TEST_ES_URL="$URL"
export OPAMP_GATEWAY_TEST_ES_API_KEY="$KEY"
.venv/bin/python -m pytest -q -p no:cacheprovider tests/store tests/test_migrate.py ${PYTEST_ARGS:-}
