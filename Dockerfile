# streamproc daemon image.
#
#   docker build -t streamproc:0.1.0 .
#   docker run -d --name streamproc --restart unless-stopped \
#       -v ./city.toml:/etc/streamproc/config.toml:ro \
#       -v streamproc-data:/var/lib/streamproc \
#       --env-file ./streamproc.env \
#       -p 127.0.0.1:9108:9108 \
#       streamproc:0.1.0
#
# ./streamproc.env holds STREAMPROC_MQTT_PASSWORD=... (or mount a password file read-only and
# name it in the config as mqtt.password_file). Output (alerts.jsonl, snapshots/, alerts/,
# state/checkpoint.npz) goes to the volume at /var/lib/streamproc. Other subcommands work too:
#   docker run --rm -v ./city.toml:/c.toml:ro streamproc:0.1.0 check-config /c.toml

FROM python:3.11-slim AS build
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# numpy, numba, llvmlite, pyarrow and orjson all ship manylinux wheels: no compiler needed.
RUN python -m venv /opt/streamproc/.venv
COPY pyproject.toml README.md ./
COPY streamproc/ streamproc/
RUN /opt/streamproc/.venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/streamproc/.venv/bin:$PATH \
    NUMBA_CACHE_DIR=/var/cache/streamproc/numba
RUN groupadd --system --gid 10001 streamproc \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/streamproc \
        --no-create-home --shell /usr/sbin/nologin streamproc \
 && install -d -m 0750 -o 10001 -g 10001 /var/lib/streamproc \
        /var/cache/streamproc /var/cache/streamproc/numba \
 && install -d -m 0755 /etc/streamproc
COPY --from=build /opt/streamproc/.venv /opt/streamproc/.venv

USER 10001:10001
# Compile the numba kernels into NUMBA_CACHE_DIR now, as the user the daemon runs as, so the
# first start loads them instead of compiling. Numba keys cache entries to the CPU: on a host
# whose CPU differs from the build machine's, the kernels are compiled again once at start
# (and the cache stays writable for that).
RUN python -c "from streamproc.config import load; from streamproc.detect import warm_up; warm_up(load(None))"

WORKDIR /var/lib/streamproc
VOLUME ["/var/lib/streamproc"]
EXPOSE 9108
# /healthz answers 200 once connected, subscribed and warmed up, 503 otherwise; urlopen raises
# on both a 503 and a refused connection. Slim images have no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4)"]
ENTRYPOINT ["streamproc"]
# Inside a container 127.0.0.1 is the container's own loopback, unreachable from Prometheus
# or the published port, so the metrics server listens on all of the container's interfaces;
# publish it on the host's loopback (-p 127.0.0.1:9108:9108) unless Prometheus scrapes it
# from another host. The output folder is the volume, whatever output.dir the config names.
CMD ["run", "-c", "/etc/streamproc/config.toml", "--out", "/var/lib/streamproc", "--metrics", "0.0.0.0:9108"]
