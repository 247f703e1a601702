# The audit-service image: one image, three processes (migrate, ingest, serve) chosen by the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY client ./client
COPY service ./service
RUN pip install --no-cache-dir . \
    && useradd --system --no-create-home audit
USER audit
EXPOSE 50051
ENTRYPOINT ["audit-service"]
CMD ["serve"]
