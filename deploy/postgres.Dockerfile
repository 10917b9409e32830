# PostgreSQL for deploy/docker-compose.yml where postgres:16 cannot be pulled: Debian's
# package on the same base as the app image, with the official image's interface
# (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, data in /var/lib/postgresql/data), so
# the compose file does not change. deploy/compose.local-base.yml builds it.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The local base has the package already; a stock Debian base gets it from the mirror.
# Unpinned: bookworm's security updates replace the version, and a pin would break the build.
# hadolint ignore=DL3008
RUN if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends postgresql \
        && rm -rf /var/lib/apt/lists/* /var/lib/postgresql/* /etc/postgresql/*; \
    fi \
    && ln -s "$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin | sort -V | tail -n1)" \
        /usr/local/lib/postgresql-bin \
    && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
    && install -d -o postgres -g postgres -m 2775 /run/postgresql
LABEL org.opencontainers.image.title="job-orchestrator-postgres"
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/local/lib/postgresql-bin:$PATH \
    PGDATA=/var/lib/postgresql/data
# Debian's postgres user has the uid its package gave it: only the name is stable.
# hadolint ignore=DL3066
USER postgres
EXPOSE 5432
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s --timeout=5s --retries=10 CMD ["pg_isready", "-h", "127.0.0.1"]
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
