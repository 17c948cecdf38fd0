"""The Procfile's processes run as a PaaS runs them, in production settings, each
process type by its own honcho invocation (tests/production/stack.py)."""
