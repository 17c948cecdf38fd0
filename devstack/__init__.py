"""Development-only helpers that start local stand-ins for the production services."""
