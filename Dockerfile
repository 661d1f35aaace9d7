# One image for every service; the command picks which (python -m services.<name>).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 UV_PROJECT_ENVIRONMENT=/opt/venv PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir uv
WORKDIR /app
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
COPY contracts contracts
COPY shared shared
COPY services services
COPY policies policies
COPY infra infra
COPY ops ops
COPY bench bench
RUN uv sync --frozen --no-dev
USER nobody
