# respan-gateway: a small image that runs as a non-root user, with a health check (docs/deploy.md).
#   docker build -t respan-gateway .          (or, with no Docker engine: deploy/build-image.sh)
#   docker run -p 8000:8000 -v "$PWD/config:/config:ro" -v respan-data:/data respan-gateway
# BASE_IMAGE is any Debian-like image with python3 >= 3.11 and python3-venv: the official slim image by
# default, or the Debian base deploy/build-image.sh makes with debootstrap (python3 3.11 from bookworm).
ARG BASE_IMAGE=docker.io/library/python:3.11-slim

# -- build: pip installs the wheels into a venv; nothing of this stage but the venv reaches the image.
FROM ${BASE_IMAGE} AS build
# Behind a TLS-inspecting proxy, pip needs its CA: deploy/build-image.sh mounts the host's bundle and
# sets PIP_CERT to it (an ARG is in the environment of the RUN steps only, never in the image).
ARG PIP_CERT
ARG PIP_INDEX_URL
# A venv works on both bases (the official image's /usr/local python, Debian's /usr/bin/python3).
RUN python3 -m venv /opt/venv
WORKDIR /src
# Dependencies first, from pyproject.toml alone: this layer stays cached while only the code changes.
COPY pyproject.toml README.md ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && /opt/venv/bin/pip install --disable-pip-version-check --only-binary=:all: -r requirements.txt
COPY respan_gateway ./respan_gateway
COPY plugins ./plugins
# --no-deps: the dependencies are the layer above. pip and setuptools leave the venv last: the image
# needs no installer.
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install --disable-pip-version-check --no-deps . \
 && /opt/venv/bin/pip uninstall --disable-pip-version-check -y setuptools pip

# -- the image: the base, the venv, the default config, a user.
FROM ${BASE_IMAGE}
COPY --from=build /opt/venv /opt/venv
RUN useradd --system --uid 10001 --user-group --home-dir /data --create-home --shell /usr/sbin/nologin respan
COPY config/gateway.toml /config/gateway.toml
# The working directory is /: the default config's relative paths (data/respan.sqlite3, the log spill
# folder data/spill) land in the /data volume.
WORKDIR /
USER 10001:10001
ENV PATH=/opt/venv/bin:$PATH \
    RESPAN_GATEWAY_CONFIG=/config/gateway.toml \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"
# The config's [server] host is for local use; in the container the gateway listens on every interface.
# `serve` drains on SIGTERM for [server] graceful_timeout (60 s): give the container at least that to stop.
# The server is `serve`'s default, uvicorn (httptools, uvloop): the least CPU per request of the three
# (docs/performance.md); `--server hypercorn` for HTTP/2.
STOPSIGNAL SIGTERM
CMD ["respan-gateway", "serve", "--host", "0.0.0.0", "--port", "8000"]
