"""The worker's tasks, by domain; importing this package registers them all."""

from worker.tasks import maintenance, privacy, tryons, uploads

__all__ = ["maintenance", "privacy", "tryons", "uploads"]
