# mailkeep container image: SMTP submission (587 STARTTLS, 465 implicit TLS) on a Maildir store.
# Build:  podman build -t mailkeep .     (or: docker build -t mailkeep .)
# Usage, volumes and environment: docs/container.md

# -- build stage: a virtualenv with mailkeep and its runtime dependencies only ---------------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# .dockerignore admits only pyproject.toml, README/LICENSE and src/ (never certs, .venv, .git)
COPY . /src
# `pip install /src` installs the [project] dependencies, never the [test] extra. pip and
# setuptools are build tools: removed from the runtime venv (about 25 MB, nothing uses them).
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir /src \
 && /opt/venv/bin/pip uninstall --yes pip setuptools \
 && /opt/venv/bin/mailkeep --version \
 && /opt/venv/bin/python -c "import mailkeep.app, mailkeep.directory.file, uvloop"

# -- runtime stage ---------------------------------------------------------------------------
FROM python:3.11-slim
LABEL org.opencontainers.image.title="mailkeep" \
      org.opencontainers.image.description="Secure mail daemon: SMTP submission on 587/465, POP3S 995 and IMAPS 993 on a Maildir store"

# A fixed, numeric non-root user so bind-mounted volumes can be chowned to it ahead of time.
ARG MAILKEEP_UID=10587
ARG MAILKEEP_GID=10587
RUN groupadd --system --gid "${MAILKEEP_GID}" mailkeep \
 && useradd --system --uid "${MAILKEEP_UID}" --gid mailkeep --no-create-home \
            --home-dir /var/lib/mailkeep --shell /usr/sbin/nologin mailkeep \
 && install -d -o mailkeep -g mailkeep -m 0750 /etc/mailkeep /var/lib/mailkeep

COPY --from=build /opt/venv /opt/venv
COPY docker/entrypoint.sh /usr/local/bin/mailkeep-entrypoint
RUN chmod 0755 /usr/local/bin/mailkeep-entrypoint

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MAILKEEP_HOSTNAME=localhost \
    MAILKEEP_DOMAINS="" \
    MAILKEEP_DEMO_USER=0 \
    MAILKEEP_CONFIG=/etc/mailkeep/mailkeep.toml

# /etc/mailkeep: mailkeep.toml, users.toml and certs/ (written by `mailkeep init` on first start)
# /var/lib/mailkeep: data_dir, Maildirs under mail/<account>/
VOLUME ["/etc/mailkeep", "/var/lib/mailkeep"]

# 587 submission (STARTTLS), 465 submissions (implicit TLS): served today.
# 995 POP3S and 993 IMAPS: served (110 and 143 with STARTTLS are off by default).
EXPOSE 587 465 993 995

USER ${MAILKEEP_UID}:${MAILKEEP_GID}
WORKDIR /var/lib/mailkeep

# Connects to every configured listener and expects a 220 greeting (TLS first on 465).
HEALTHCHECK --interval=30s --timeout=15s --start-period=20s --retries=3 \
  CMD ["mailkeep", "health", "--config", "/etc/mailkeep/mailkeep.toml"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/mailkeep-entrypoint"]
# Extra arguments for `mailkeep serve`, e.g. `--log-level debug` or `--loop asyncio`.
CMD []
