"""Alembic migrations of the origin's database, run at startup."""
