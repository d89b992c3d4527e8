# syntax=docker/dockerfile:1
# opamp-gateway image: `docker build -t opamp-gateway:$(python -c 'import gateway; print(gateway.__version__)') .`
# Two stages: the builder makes a wheel and installs it with its dependencies into a virtualenv; the
# final image is the slim Python base plus that virtualenv, run as an unprivileged user.
# Pin the base by digest in your own builds (python:3.11-slim@sha256:...) for reproducible images.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest of the repository out), and the
# versions to install: requirements/ is cut from the lock the tests ran with (`make lock`).
COPY requirements/runtime.txt requirements/build.txt ./requirements/
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# Every package ships manylinux wheels for CPython 3.11, so no compiler is needed; --only-binary makes a
# missing wheel fail the build instead of compiling silently, and --require-hashes makes any package or
# version the lock does not name fail it. The build backend is locked too (no build isolation).
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes --only-binary=:all: -r requirements/build.txt \
 && /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /dist . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --require-hashes --only-binary=:all: -r requirements/runtime.txt \
 && /opt/venv/bin/pip install --no-deps /dist/*.whl

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=""
LABEL org.opencontainers.image.title="opamp-gateway" \
      org.opencontainers.image.description="A stateless, horizontally scaled OpAMP server" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
# A fixed numeric uid/gid (10001) so Kubernetes' runAsNonRoot can verify it; no shell login, no home.
RUN groupadd --system --gid 10001 opamp \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin opamp \
 && mkdir -p /var/lib/opamp-gateway \
 && chown 10001:10001 /var/lib/opamp-gateway
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Default SQLite location for `docker run`; the Helm chart mounts a volume here.
WORKDIR /var/lib/opamp-gateway
USER 10001:10001
# OpAMP (POST and WebSocket /v1/opamp, /healthz, /readyz) and admin (/api/v1, /metrics).
EXPOSE 4320 4321
ENTRYPOINT ["opamp-gateway", "serve"]
