"""Persistence: the Store seam, its SQLite and Postgres engines, encryption, the worker."""
