# One image for the whole stack; the command picks what a container runs:
#   python -m users_service [serve|migrate|create-service-account ...]
#   python -m ai_service [serve|migrate]
#   python -m gateway
#
# No image-level HEALTHCHECK: this image runs three different servers and one-shot jobs
# (two migrations, the gateway's service account), and a check baked in here would have
# to guess which one a container runs - a wrong guess marks a healthy container
# unhealthy (and a one-shot job can never be "healthy"). Each runner checks what it started instead: docker-compose.yml per
# service (`python -m servicekit.healthcheck` for gRPC, /readyz for the gateway),
# Kubernetes with exec probes running that same module over mTLS (its native gRPC probe
# cannot do TLS) and HTTP probes for the gateway; Kubernetes ignores HEALTHCHECK anyway.

# Both stages must use the same interpreter: the venv is built in one, run in the other.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src

# The runtime dependencies alone first, at the pinned versions: this layer is rebuilt
# when the pins change, not on every edit of the code. The dev extra is never installed.
COPY pyproject.toml constraints.txt ./
# The pins hold inside pip's isolated build environment too, so the build backend
# (hatchling) is the pinned one rather than whatever is newest: pip before 25.3 applies
# PIP_CONSTRAINT there, 25.3 and later PIP_BUILD_CONSTRAINT (and warn about the former
# alone). `-c constraints.txt` below pins the packages themselves.
ENV PIP_CONSTRAINT=/src/constraints.txt \
    PIP_BUILD_CONSTRAINT=/src/constraints.txt
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > requirements.txt \
    && pip install -c constraints.txt -r requirements.txt

# Then the project itself as a regular (not editable) install: the wheel carries the
# generated tandem_protos package, the tandem_client package and each service's alembic
# migrations, so `python -m users_service migrate` works from /opt/venv alone.
COPY README.md ./
COPY client ./client
COPY servicekit ./servicekit
COPY users_service ./users_service
COPY ai_service ./ai_service
COPY gateway ./gateway
RUN pip install -c constraints.txt .

FROM ${PYTHON_IMAGE} AS runtime
# Inside a container the services must listen on every interface, not the loopback
# the defaults use; the ports stay the defaults. Logs are JSON, one object per line,
# for the log pipeline that collects them (text is for `make run` at a terminal).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    USERS_ADDR=0.0.0.0:50051 \
    AI_ADDR=0.0.0.0:50052 \
    GATEWAY_ADDR=0.0.0.0:8000 \
    USERS_LOG_FORMAT=json \
    AI_LOG_FORMAT=json \
    GATEWAY_LOG_FORMAT=json
# A numeric uid, so Kubernetes' runAsNonRoot can verify it. /app/data is where the
# embedded SQLite defaults write, for a quick `docker run` without PostgreSQL.
# /var/lib/tandem/keys and /var/lib/tandem/gateway are where docker-compose.yml mounts
# the users service's key volume and the gateway's service-account secret volume: a new
# named volume copies the ownership of the directory it is mounted on, so each must
# exist here, owned by that user, or the service (or the one-shot job that makes the
# gateway's account) could not write its file there.
# Not a --system user: those must have a uid below SYS_UID_MAX (999), and useradd warns
# on every build that 10001 is above it. --no-log-init keeps the uid out of the sparse
# lastlog and faillog files.
RUN groupadd --gid 10001 tandem \
    && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin tandem \
    && install -d -o 10001 -g 10001 /app /app/data \
    && install -d -m 0700 -o 10001 -g 10001 /var/lib/tandem/keys /var/lib/tandem/gateway
# Only the venv: no compiler, no pip cache, no sources beyond the installed packages.
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
EXPOSE 50051 50052 8000
CMD ["python", "-m", "gateway"]
