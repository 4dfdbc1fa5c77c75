# syntax=docker/dockerfile:1
# Payment routing gateway image.
#
#   docker build -t payment-gateway .                                   # python:3.11-slim base
#   scripts/build-image.sh                                              # no registry: buildah +
#                                                                       # a debootstrap'd base
#   docker run -p 8080:8080 -v gw-config:/etc/gateway -v gw-data:/var/lib/gateway payment-gateway
#
# The base must provide python3 >= 3.11 (Debian bookworm's python3 or the official
# python image). The builder stage installs python3-venv with apt only when the base
# lacks ensurepip (Debian's python3 without python3-venv).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- builder
FROM ${BASE_IMAGE} AS builder
USER root
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN set -eux; \
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -m venv /opt/gateway
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY providers ./providers
COPY routing ./routing
COPY config ./config
# A regular (not editable) install: the final stage needs only /opt/gateway (pip and
# setuptools are removed from it: installers are not runtime dependencies).
# Optional build secret "pip_ca": a CA bundle for pip behind a TLS-intercepting proxy
# (scripts/build-image.sh passes the host's); it is never stored in a layer.
# The shipped default config keeps its data under ./data next to the checkout; in the image
# the SQLite file lives on the data volume.
RUN --mount=type=secret,id=pip_ca set -eux; \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    /opt/gateway/bin/pip install /src; \
    /opt/gateway/bin/gateway --help >/dev/null; \
    mkdir -p /out/etc/gateway; \
    cp config/routing.yaml /out/etc/gateway/routing.yaml; \
    sed -e 's|^store:.*|store: sqlite:////var/lib/gateway/gateway.db   # the data volume|' \
        config/gateway.yaml > /out/etc/gateway/gateway.yaml; \
    grep -q '^store: sqlite:////var/lib/gateway/gateway.db' /out/etc/gateway/gateway.yaml; \
    /opt/gateway/bin/python -m pip uninstall --yes pip setuptools; \
    /opt/gateway/bin/gateway check-config --config /out/etc/gateway/gateway.yaml

# ---------------------------------------------------------------- runtime
FROM ${BASE_IMAGE}
USER root
RUN set -eux; \
    groupadd --system --gid 10001 gateway; \
    useradd --system --uid 10001 --gid gateway --home-dir /var/lib/gateway \
        --no-create-home --shell /usr/sbin/nologin gateway; \
    mkdir -p /etc/gateway /var/lib/gateway; \
    chown gateway:gateway /var/lib/gateway; \
    chmod 0750 /var/lib/gateway
COPY --from=builder /opt/gateway /opt/gateway
COPY --from=builder /out/etc/gateway/ /etc/gateway/
ENV PATH=/opt/gateway/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Configuration (gateway.yaml, routing.yaml; hot-reloaded) and SQLite data are volumes.
VOLUME ["/etc/gateway", "/var/lib/gateway"]
WORKDIR /var/lib/gateway
USER gateway:gateway
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["gateway", "serve"]
CMD ["--config", "/etc/gateway/gateway.yaml", "--host", "0.0.0.0"]
