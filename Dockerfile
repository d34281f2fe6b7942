# vkprovider's container image. Build it as is with either tool (Dockerfile is a copy of this file):
#
#   docker build -t vkprovider:0.1.0 .          podman build -t vkprovider:0.1.0 .
#
# BASE_IMAGE is any Debian-like image with python3 >= 3.11 and its venv module (python:3.11-slim by default;
# `make image` builds on a Debian bookworm made locally with debootstrap, see hack/image/build.sh).
# Behind a TLS-inspecting proxy, give pip its CA as a build secret (kept out of every layer):
#   --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt
#
# Two stages: the builder makes the project's wheel and a wheelhouse of its dependencies (binary wheels only:
# nothing is compiled); the final stage installs from those wheels into /opt/vkprovider, with no build tools,
# no pip and no pip cache left in it, and runs as the non-root user 65532.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
LABEL dev.vkprovider.stage=builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/build
WORKDIR /src
# The dependencies first (a layer that only pyproject.toml invalidates), then the project itself.
COPY pyproject.toml README.md ./
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
 && /opt/build/bin/pip wheel --only-binary=:all: --wheel-dir /wheels -r /tmp/requirements.txt
COPY vkprovider ./vkprovider
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && /opt/build/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/build/bin/pip wheel --no-index --find-links /wheels --wheel-dir /wheels /wheels/vkprovider-*.whl

FROM ${BASE_IMAGE}
# `make image` passes VERSION from vkprovider/__init__.py; a test keeps this default equal to it.
ARG VERSION=0.1.0
ARG SOURCE=""
LABEL org.opencontainers.image.title="vkprovider" \
      org.opencontainers.image.description="Koupleless bases as virtual Kubernetes nodes, modules as pods (ModuleController v2 in Python)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH="/opt/vkprovider/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The wheels are bind-mounted from the builder, so none of them (and no pip cache) is stored in a layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python3 -m venv /opt/vkprovider \
 && /opt/vkprovider/bin/pip install --no-cache-dir --disable-pip-version-check --no-index --find-links /wheels \
        "vkprovider==${VERSION}" \
 && /opt/vkprovider/bin/pip uninstall --yes --disable-pip-version-check pip setuptools \
 && rm -rf /root/.cache \
 && echo 'vkprovider:x:65532:65532:vkprovider:/nonexistent:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'vkprovider:x:65532:' >> /etc/group \
 && vkprovider --version
# heartbeats (HTTP tunnel), Prometheus /metrics, /healthz + /readyz, the vnodes' kubelet API
EXPOSE 7777 9090 8081 10250
WORKDIR /
USER 65532:65532
ENTRYPOINT ["vkprovider"]
CMD ["run"]
