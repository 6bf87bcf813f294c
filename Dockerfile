# tornadoproxy: every requirement built or fetched as a wheel and installed into a virtualenv in a
# first stage; the final stage copies only that virtualenv onto a clean slim base (no compiler, no pip in
# the virtualenv, no sources), runs as a non-root user and is health-checked. The pycurl and curl_cffi
# wheels bundle their own libcurl: nothing from apt is needed at run time.

# The version the image is labelled with. The build fails unless it is the package's own
# (tornadoproxy/__init__.py), so the label cannot drift from `tornadoproxy --version`.
ARG VERSION=0.1.0

FROM python:3.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY setup.py constraints.txt ./
COPY tornadoproxy ./tornadoproxy
ARG VERSION
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt .
RUN test -f "/wheels/tornadoproxy-${VERSION}-py3-none-any.whl" \
    || { echo "ARG VERSION=${VERSION} is not the package's version: $(ls /wheels)" >&2; exit 1; }
RUN python -m venv /opt/tornadoproxy \
    && /opt/tornadoproxy/bin/pip install --no-cache-dir --no-index --find-links /wheels tornadoproxy \
    && /opt/tornadoproxy/bin/pip uninstall --yes pip setuptools

FROM python:3.11-slim-bookworm

ARG VERSION
# The commit and its time (RFC 3339), as `docker build --build-arg` gives them (README "Deployment").
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="tornadoproxy" \
      org.opencontainers.image.description="Self-hosted gateway in front of the ChatGPT web backend and the OpenAI Platform API" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/tornadoproxy/bin:$PATH

COPY --from=build /opt/tornadoproxy /opt/tornadoproxy
# /var/lib/tornadoproxy: for the tokens.store file; a named volume mounted there inherits owner and mode.
RUN useradd --system --uid 10001 -K SYS_UID_MAX=10001 --no-create-home --shell /usr/sbin/nologin tornadoproxy \
    && install -d -m 0700 -o tornadoproxy -g tornadoproxy /var/lib/tornadoproxy
COPY conf/tornadoproxy.yaml /etc/tornadoproxy/tornadoproxy.yaml

USER 10001
WORKDIR /var/lib/tornadoproxy
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('GO_CHATGPT_API_PORT') or os.environ.get('PORT') or '8080'; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tornadoproxy"]
CMD ["--config", "/etc/tornadoproxy/tornadoproxy.yaml"]
