"""Celery workers: thin tasks over the domain functions in shared/."""
