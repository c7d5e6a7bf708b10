# respan-gateway: a small image that runs as a non-root user, with a health check.
# Build: docker build -t respan-gateway .   Run: docker run -p 8000:8000 -v "$PWD/config:/config:ro" respan-gateway
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY respan_gateway ./respan_gateway
COPY plugins ./plugins
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --home-dir /data --create-home respan
COPY config/gateway.toml /config/gateway.toml
WORKDIR /data
USER respan
ENV RESPAN_GATEWAY_CONFIG=/config/gateway.toml \
    PYTHONUNBUFFERED=1
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"
# The config's [server] host is for local use; in the container the gateway listens on every interface.
CMD ["respan-gateway", "serve", "--host", "0.0.0.0", "--port", "8000"]
