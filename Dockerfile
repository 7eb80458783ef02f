# The one image both Helm charts run (deploy/helm/*): `wpctl controller`, `wpctl gateway`,
# `wpctl control-plane` and `wpctl agent` are subcommands of the same entrypoint.
#
#   docker build -t workflowplane:0.1.0 .
#
# Runs as an unprivileged user (uid/gid 10001, as the charts' securityContext expects) and works
# on a read-only root filesystem: only /tmp must be writable (the charts mount an emptyDir).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python -m venv /opt/workflowplane
# Only what the package is built from (see .dockerignore). src/workflowplane/api/crds is a
# symlink to deploy/crds, so the CRDs must be in the build context too.
COPY pyproject.toml README.md ./
COPY deploy/crds/ deploy/crds/
COPY src/ src/
RUN /opt/workflowplane/bin/pip install . \
 && /opt/workflowplane/bin/wpctl --version \
 && test -n "$(ls /opt/workflowplane/lib/python3.11/site-packages/workflowplane/api/crds/*.yaml)"

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="workflowplane" \
      org.opencontainers.image.description="OpenChoreo-compatible WorkflowPlane: controller, cluster gateway, cluster agent (wpctl)"
RUN groupadd --system --gid 10001 workflowplane \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
      --shell /usr/sbin/nologin workflowplane
COPY --from=build /opt/workflowplane /opt/workflowplane
ENV PATH=/opt/workflowplane/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TMPDIR=/tmp
# Numeric, so that Kubernetes can verify runAsNonRoot without resolving the name.
USER 10001:10001
WORKDIR /tmp
# Gateway: 8443 agents (TLS), 8444 internal API (mTLS), 8080 health/metrics.
EXPOSE 8443 8444 8080
ENTRYPOINT ["wpctl"]
CMD ["--help"]

# Drop-in images for OpenChoreo's own charts, which pass only `args` (their flags, unchanged):
#   docker build --target cluster-gateway -t …/cluster-gateway .
#   docker build --target cluster-agent   -t …/cluster-agent .
FROM runtime AS cluster-gateway
ENTRYPOINT ["cluster-gateway"]
CMD []

FROM runtime AS cluster-agent
ENTRYPOINT ["cluster-agent"]
CMD []

# The default target: wpctl (every component, the CLI).
FROM runtime
