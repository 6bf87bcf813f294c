# tornadoproxy: slim Python 3.11 image, non-root, health-checked.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The pycurl wheel bundles its own libcurl and OpenSSL: no compiler or system libcurl is needed.
COPY setup.py constraints.txt README.md ./
COPY tornadoproxy ./tornadoproxy
RUN pip install --no-cache-dir -c constraints.txt . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tornadoproxy \
    && install -d -m 0700 -o tornadoproxy -g tornadoproxy /var/lib/tornadoproxy
# /var/lib/tornadoproxy: for tokens.store file; a named volume mounted there inherits owner and mode.
COPY conf/tornadoproxy.yaml /etc/tornadoproxy/tornadoproxy.yaml

USER tornadoproxy
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('GO_CHATGPT_API_PORT') or os.environ.get('PORT') or '8080'; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tornadoproxy"]
CMD ["--config", "/etc/tornadoproxy/tornadoproxy.yaml"]
