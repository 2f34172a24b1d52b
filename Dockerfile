# tellonce: a slim, non-root image whose entrypoint is `tellonce serve`.
# Not built on the machine this was written on (no Docker there): it is linted with hadolint
# in the tests, and compose.yaml is checked against the Compose specification.
#
# With Docker Compose (PostgreSQL, a one-shot init, the API, the worker): see compose.yaml.
# By hand, the data directory must be a volume (the signing keys live there) and `init`
# must run once before `serve`:
#   docker build -t tellonce .
#   docker volume create tellonce-data
#   docker run --rm -v tellonce-data:/app/.tellonce \
#     -e TELLONCE_ENV=production -e TELLONCE_ROOT_KEY=<base64 32 bytes from your KMS> \
#     -e TELLONCE_DATABASE_URL=postgresql+asyncpg://tellonce:PASSWORD@db:5432/tellonce \
#     -e TELLONCE_PUBLIC_URL=https://tellonce.example.gov.uk \
#     --entrypoint tellonce tellonce init
#   docker run -p 8000:8000 -v tellonce-data:/app/.tellonce  (same -e options)  tellonce

FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/tellonce
COPY pyproject.toml README.md ./
COPY service ./service
# The demo's department systems use the client library (clients/python).
COPY clients/python ./clients/python
RUN /opt/tellonce/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/tellonce/bin/pip install --no-cache-dir . ./clients/python

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin tellonce
WORKDIR /app
COPY --from=build /opt/tellonce /opt/tellonce
# Migrations and policies are read from beside the package at run time.
COPY --chown=root:root migrations ./migrations
COPY --chown=root:root policies ./policies
COPY --chown=root:root alembic.ini ./
RUN mkdir -p /app/.tellonce && chown tellonce /app/.tellonce
ENV PATH=/opt/tellonce/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TELLONCE_DATA_DIR=/app/.tellonce
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["tellonce", "serve", "--host", "0.0.0.0", "--port", "8000"]
