"""Code shared by the API and the workers: settings, models, storage, domain logic."""
