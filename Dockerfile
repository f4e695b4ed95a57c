# The BayChat server image: one image for every role (gateway, worker, migrate), chosen by
# the command. `docker compose up` builds it; see docs/OPERATIONS.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/baychat/bin:$PATH

# pg_dump for `baychat backup` (Debian's client; it must be of the server's major version or
# newer, which Debian's is for the postgres:15 server of docker-compose.yml).
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*

# A system user with no shell and no home of its own beyond its data directory.
RUN groupadd --system --gid 10001 baychat \
    && useradd --system --uid 10001 --gid baychat --no-create-home \
       --home-dir /var/lib/baychat --shell /usr/sbin/nologin baychat

# Only what the package needs (tests, docs and local data stay out; see .dockerignore).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protocol ./protocol
COPY storage ./storage
COPY server ./server
COPY loadtest ./loadtest
# A regular (not editable) install, so the image runs without /src; the wheels of the
# compiled dependencies (asyncpg, hiredis, orjson, msgspec, argon2) need no compiler.
RUN python -m venv /opt/baychat \
    && /opt/baychat/bin/pip install --no-compile . \
    && rm -rf /src

# The tenant key store (shared by gateways and workers), the database backups and the
# key-store backups are volumes; created here so that a fresh named volume inherits this
# owner and mode.
RUN install -d -o baychat -g baychat -m 0700 \
    /var/lib/baychat /var/lib/baychat/keys /var/lib/baychat/backups \
    /var/lib/baychat/keystore-backups

WORKDIR /var/lib/baychat
USER baychat:baychat
ENV BAYCHAT_DATA_DIR=/var/lib/baychat \
    BAYCHAT_KEYSTORE_DIR=/var/lib/baychat/keys

EXPOSE 8000
ENTRYPOINT ["baychat"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
