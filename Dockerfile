# Image of the example site: tusbridge installed from this checkout, served by
# gunicorn with 2 × cores + 1 gevent workers on port 8000. Used by docker-compose.yml.

# The example pages' JavaScript (Uppy, jQuery-File-Upload...) from the npm registry.
FROM node:20-slim AS js
WORKDIR /js
COPY example/package.json example/package-lock.json ./
RUN npm ci --no-audit --no-fund

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The library first, so that editing the example does not reinstall it.
COPY pyproject.toml ./
COPY tusbridge ./tusbridge
RUN pip install ".[gevent]"

COPY example ./example
COPY --from=js /js/node_modules ./example/node_modules

# example/var holds the sqlite db, the secret key and the uploads; it is a
# volume in docker-compose.yml and must be writable by the unprivileged user.
RUN useradd --create-home --uid 10001 app \
    && mkdir -p /app/example/var/uploads \
    && chown -R app:app /app/example/var
USER app

EXPOSE 8000

CMD ["sh", "-c", "python example/bootstrap.py && exec gunicorn example_site.wsgi:application --config python:tusbridge.gunicorn.config --chdir example --workers $((2 * $(nproc) + 1)) --worker-class gevent --worker-connections 2000 --timeout 60 --bind 0.0.0.0:8000 --access-logfile -"]
