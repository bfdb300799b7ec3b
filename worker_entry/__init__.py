"""The image entrypoint (``worker-entry``), the default Celery app and its example tasks."""
