# syntax=docker/dockerfile:1
# Cohort: one image for every role (coordinator, site agent, operator one-shots).
#
#   docker build -t cohort:latest .
#   docker run --rm cohort:latest --help
#
# Every role runs `cohort …` as the unprivileged user `cohort` (uid 10001). The image
# carries no keys, tokens or data: those live in the volumes docker-compose.yml mounts.
#
# CPU by default. For a site with NVIDIA GPUs, build with the CUDA build of torch
# (the wheel brings its own CUDA user-space libraries; the host needs the NVIDIA
# driver and the NVIDIA Container Toolkit, and the service needs `gpus: all`):
#
#   docker build -t cohort:cuda \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#
# or start from an nvidia/cuda runtime image instead: see docs/deployment.md
# ("Sites with GPUs"), which also says how to pick the cuXYZ suffix.

ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

# torch is installed first, on its own, from the PyTorch CPU index: otherwise
# `pip install .` (peft, shap, transformers) pulls the multi-GB CUDA build from PyPI.
# (The machine this file was written on reaches PyPI only, not download.pytorch.org,
# so it has never been built there; any machine with normal internet access can.)
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# CUDA sites: ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg

RUN python -m pip install --upgrade pip \
 && python -m pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# The other dependencies next, read from pyproject.toml, so that editing Cohort's code
# does not re-download them on every build.
COPY pyproject.toml /tmp/cohort-deps/pyproject.toml
RUN python -c "import tomllib; deps = tomllib.load(open('/tmp/cohort-deps/pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(deps))" \
        > /tmp/cohort-deps/requirements.txt \
 && python -m pip install -r /tmp/cohort-deps/requirements.txt \
 && rm -rf /tmp/cohort-deps

# Cohort itself (.dockerignore lets in only the packages, pyproject.toml, README.md, deploy/).
COPY . /tmp/cohort-src
RUN python -m pip install /tmp/cohort-src \
 && install -d -m 0755 /opt/cohort \
 && cp -r /tmp/cohort-src/deploy /opt/cohort/deploy \
 && chmod 0755 /opt/cohort/deploy/*.sh /opt/cohort/deploy/*.py \
 && rm -rf /tmp/cohort-src

# The unprivileged user, and the mount points a fresh named volume copies its owner
# from (so /data, /state and /pki are writable by `cohort` without a chown step).
RUN groupadd --system --gid 10001 cohort \
 && useradd --system --uid 10001 --gid cohort --create-home --home-dir /home/cohort \
        --shell /usr/sbin/nologin cohort \
 && install -d -o cohort -g cohort -m 0750 /data /state /pki /operator \
 && install -d -o cohort -g cohort -m 0755 /site-data

USER cohort
WORKDIR /home/cohort
EXPOSE 50051

ENTRYPOINT ["cohort"]
CMD ["--help"]
