# The Python services of docker-compose.yml (worker, executors, topic creation): `dispatch <command>`.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY dispatch_core ./dispatch_core
COPY dispatch_cli ./dispatch_cli
COPY streams ./streams
COPY schemas ./schemas
COPY workers ./workers
COPY stack ./stack
RUN pip install --no-cache-dir . && useradd --create-home dispatch && mkdir -p /data && chown dispatch /data  # /data: the finance store (compose)
USER dispatch
ENTRYPOINT ["dispatch"]
