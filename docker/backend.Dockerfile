# syntax=docker/dockerfile:1
# The ML backend Label Studio talks to: the light install (no torch, no GPU). It puts the work on
# the Redis queue (REDIS_URL) and the GPU workers (worker.Dockerfile) run the model.
# Build from the repository root:  docker build -f docker/backend.Dockerfile -t varco-backend .
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
# Optional extras on top of the light install, e.g. EXTRAS=postgres for a PostgreSQL
# VARCO_DATABASE_URL (never "worker": that is worker.Dockerfile).
ARG EXTRAS=""

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# What `pip install .` needs and nothing else (see pyproject.toml: packages varco_labeler*, worker*).
COPY pyproject.toml README.md ./
COPY varco_labeler ./varco_labeler
COPY worker ./worker
# The light install, exactly as the README gives it; then the extras asked for; no torch either way.
RUN pip install . \
    && if [ -n "$EXTRAS" ]; then pip install ".[$EXTRAS]"; fi \
    && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

RUN useradd --create-home --uid 10001 varco \
    && mkdir -p /data \
    && chown varco /data
USER varco

# MODEL_DIR keeps the webhook events (events.jsonl) and the feedback store: mount a volume here.
ENV MODEL_DIR=/data \
    PORT=9090
EXPOSE 9090
VOLUME ["/data"]

HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '9090'), timeout=2)"

# Queue mode when REDIS_URL is set (the compose file sets it); embedded mode otherwise, which
# needs the worker extra and is what worker.Dockerfile is for.
CMD ["varco-labeler", "serve"]
