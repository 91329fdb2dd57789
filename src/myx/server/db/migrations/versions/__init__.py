"""Alembic revisions, numbered ``NNNN_<slug>.py`` (``scripts/new_migration.sh`` picks the next number)."""
