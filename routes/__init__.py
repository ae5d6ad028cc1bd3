"""The engine: route model, RabbitMQ topology, the worker, retries, dead letters, idempotency."""
