"""Alembic migrations of the control server's database, shipped inside the package.

``myx.server.db.migrate`` runs them from code: no ``alembic.ini`` is needed. ``env.py`` and
``script.py.mako`` live here, the revisions in ``versions/``; ``hooks`` holds the autogenerate
options that ``env.py``, the drift check and ``scripts/new_migration.sh`` share.
"""
