# syntax=docker/dockerfile:1
# The GPU worker: loads VARCO-VISION once and runs pre-labelling jobs from the Redis queue.
# One container per GPU; as many machines as you like, all pointing at the same REDIS_URL.
# Build from the repository root:  docker build -f docker/worker.Dockerfile -t varco-worker .
# PyTorch wheels bring their own CUDA libraries; the host needs the NVIDIA driver and the
# NVIDIA Container Toolkit. For wheels built for another CUDA version, pass PyTorch's wheel index:
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

# The same pins as scripts/setup.sh (TORCH_SPEC).
ARG TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
ARG TORCH_INDEX_URL=""

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# torch first, in its own layer: it is most of the image and changes least often.
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} $TORCH_SPEC

WORKDIR /app
COPY pyproject.toml README.md ./
COPY varco_labeler ./varco_labeler
COPY worker ./worker
# The worker install, exactly as the README gives it: transformers, accelerate (torch is there).
RUN pip install ".[worker]"
# EXTRAS=train for the `loop` service (it fine-tunes): trl, peft, datasets.
ARG EXTRAS=""
RUN if [ -n "$EXTRAS" ]; then pip install ".[worker,$EXTRAS]"; fi

RUN useradd --create-home --uid 10001 varco \
    && mkdir -p /data/hf /data/varco \
    && chown -R varco /data
USER varco

# HF_HOME caches the downloaded checkpoint: mount a volume so a restart does not download again.
ENV HF_HOME=/data/hf \
    MODEL_DIR=/data/varco
VOLUME ["/data"]

# REDIS_URL, VARCO_MODEL, LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY come from the environment.
CMD ["varco-worker"]
