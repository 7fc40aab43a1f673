# hlsrelay: HLS ingest relay. Build: docker build -t hlsrelay .
# Run and deploy: docs/deploy.md.

# -- build: install the relay and its dependencies into a virtualenv ---------
FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/hlsrelay
# The metadata and the code are all the package needs; tests and tools stay out.
COPY pyproject.toml README.md ./
COPY app ./app
RUN /opt/hlsrelay/bin/pip install --no-cache-dir . \
    && /opt/hlsrelay/bin/python -m compileall -q /opt/hlsrelay/lib

# -- run: the same slim base, the virtualenv, and nothing else ----------------
FROM python:3.11-slim-bookworm

# The image listens on every interface: with no HLSRELAY_AUTH_TOKEN,
# HLSRELAY_BASIC_AUTH or HLSRELAY_ALLOW_CIDRS set, `serve` refuses to start
# (pass `serve --allow-anonymous` on a private network only).
ENV PATH=/opt/hlsrelay/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HLSRELAY_HOST=0.0.0.0 \
    HLSRELAY_PORT=5080 \
    HLSRELAY_SPOOL_DIR=/var/spool/hlsrelay \
    HLSRELAY_LOG_FORMAT=json

# A fixed numeric id, so runAsNonRoot and volume ownership can be checked.
RUN groupadd --system --gid 10001 hlsrelay \
    && useradd --system --uid 10001 --gid hlsrelay --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin hlsrelay \
    && mkdir -p /var/spool/hlsrelay \
    && chown hlsrelay:hlsrelay /var/spool/hlsrelay

COPY --from=build /opt/hlsrelay /opt/hlsrelay

USER 10001:10001
# Acknowledged uploads live here until S3 has them: keep it across restarts.
VOLUME ["/var/spool/hlsrelay"]
EXPOSE 5080

HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-m", "app.healthcheck"]

# Exec form: the relay is PID 1 and gets SIGTERM itself, then drains uploads
# for HLSRELAY_SHUTDOWN_GRACE_S (give `docker stop -t` a few seconds more).
STOPSIGNAL SIGTERM
ENTRYPOINT ["hlsrelay"]
CMD ["serve"]
