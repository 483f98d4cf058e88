# Worker image for the visual-sysid pipeline.
#
# The default base has CUDA-enabled PyTorch (Python 3.11); for CPU-only machines build with
#   docker build --build-arg BASE_IMAGE=python:3.11-slim .
# (pip then installs the CPU/CUDA torch wheel that matches the platform).
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

FROM ${BASE_IMAGE} AS worker

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # containers take their settings from the environment only, never from a stray datajoint.json
    DJ_IGNORE_CONFIG_FILE=true \
    SYSID_HOME=/var/lib/sysid

WORKDIR /app

# Dependencies first (cached while only the code changes); torch from the base image satisfies
# the requirement, so pip does not download another multi-GB build.
COPY pyproject.toml README.md ./
RUN mkdir -p pipeline schemas sysid \
    && touch pipeline/__init__.py schemas/__init__.py sysid/__init__.py \
    && pip install . \
    && pip uninstall -y visual-sysid

COPY pipeline ./pipeline
COPY schemas ./schemas
COPY sysid ./sysid
RUN pip install --no-deps . \
    && useradd --create-home --uid 1000 sysid \
    && mkdir -p /var/lib/sysid /stores/models \
    && chown -R sysid /var/lib/sysid /stores

COPY docker/entrypoint.sh /usr/local/bin/sysid-entrypoint
RUN chmod 0755 /usr/local/bin/sysid-entrypoint

USER sysid
# exec form: the worker is PID 1's child via `exec`, so `docker stop` delivers SIGTERM to it
ENTRYPOINT ["sysid-entrypoint"]
CMD ["worker", "--sleep", "60"]

# Optional notebook image (docker compose --profile notebook up): the worker image plus JupyterLab.
FROM worker AS notebook
USER root
RUN pip install jupyterlab
USER sysid
WORKDIR /home/sysid/work
ENTRYPOINT []
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser"]
