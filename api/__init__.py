"""The HTTP API: thin Flask + flask-smorest views over shared/ domain functions."""
