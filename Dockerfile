# Hewer: one image for the engine and for workers.
#
#   docker build -t hewer .
#
# Engine (SQLite on /var/lib/hewer unless --database-url names PostgreSQL):
#
#   docker run -p 7070:7070 -p 8080:8080 -v hewer-state:/var/lib/hewer \
#     -e HEWER_BROADCAST_ADDRESS=engine.example:7070 hewer
#
# Worker, either the same image with your code mounted at /app:
#
#   docker run -v "$PWD:/app:ro" -e HEWER_TOKEN=... -e HEWER_HOST_PORT=engine.example:7070 \
#     -e HEWER_WORKER_HEALTHCHECK_PORT=8001 hewer worker start app:worker
#
# or an image of its own built on this one:
#
#   FROM hewer
#   COPY requirements.txt /tmp/
#   USER root
#   RUN pip install --no-cache-dir -r /tmp/requirements.txt
#   USER 10001:10001
#   COPY . /app
#   ENV HEWER_WORKER_HEALTHCHECK_PORT=8001
#   CMD ["worker", "start", "app:worker"]
#
# (pip is the image's venv's: PATH puts /opt/hewer/bin first; the code stays root-owned so
# that the worker process cannot rewrite it.)
#
# The HEALTHCHECK below probes the worker's health port when
# HEWER_WORKER_HEALTHCHECK_PORT is set, else the engine's HTTP API port, so it is right
# for both without being redefined. compose.yaml runs two replicas over PostgreSQL and a
# worker; tests/deploy/test_containers.py runs every command of both files.

FROM python:3.13-slim AS builder

# Every dependency ships wheels for this Python on linux/amd64 and linux/arm64, so no
# compiler is needed; the stage exists to keep pip's build tooling (hatchling) and the
# source tree out of the final image.
RUN python -m venv /opt/hewer
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src/ src/
# A regular (not editable) install: the venv then holds everything and /src can go.
RUN /opt/hewer/bin/pip install --no-cache-dir --disable-pip-version-check .


FROM python:3.13-slim

LABEL org.opencontainers.image.title="hewer" \
      org.opencontainers.image.description="Durable task orchestration engine and worker SDK, wire-compatible with Hatchet"

# A fixed numeric uid lets Kubernetes' runAsNonRoot verify it, and lets a worker read the
# token file an engine container wrote on a shared volume (the file is mode 0600).
RUN groupadd --system --gid 10001 hewer \
 && useradd --system --no-log-init --uid 10001 --gid hewer \
      --home-dir /var/lib/hewer --shell /usr/sbin/nologin hewer \
 && install -d -o hewer -g hewer -m 0750 /var/lib/hewer

# The venv was built against the same base image, so its interpreter links stay valid.
COPY --from=builder /opt/hewer /opt/hewer

# HEWER_HOST: in a container the default 127.0.0.1 is unreachable from anywhere else.
# The state dir and the SQLite file live in /var/lib/hewer, which the image makes owned by
# the hewer user so that a named volume mounted there starts out writable.
ENV PATH=/opt/hewer/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HEWER_HOST=0.0.0.0 \
    HEWER_STATE_DIR=/var/lib/hewer \
    HEWER_DATABASE=/var/lib/hewer/hewer.db

# `hewer worker start app:worker` imports app.py from the working directory.
WORKDIR /app
USER 10001:10001

# gRPC, HTTP API (/health, /ready, /metrics).
EXPOSE 7070 8080

# Slim images have no curl. An answer other than 2xx, or none, makes urlopen raise: exit 1.
# An optional argument picks the path (compose passes /ready for engines).
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request as u; e = os.environ.get; port = e('HEWER_WORKER_HEALTHCHECK_PORT') or e('HEWER_API_PORT') or '8080'; u.urlopen(f'http://127.0.0.1:{port}' + (sys.argv[1:] or ['/health'])[0], timeout=8)"]

# SIGTERM (docker stop) stops either one gracefully; both exit 0.
ENTRYPOINT ["hewer"]
CMD ["engine"]
