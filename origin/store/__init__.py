"""The origin's persistent state: SQLAlchemy Core, schema by Alembic."""

from liveclass.origin.store import schema
from liveclass.origin.store.store import ClassExists, Store

__all__ = ["ClassExists", "Store", "schema"]
