"""Database plumbing shared by the services; each service keeps its own tables and database."""

from opsconductor_db.database import ServiceDatabase
from opsconductor_db.deps import Session, get_session
from opsconductor_db.repository import Page, Repository
from opsconductor_db.types import GUID, UTCDateTime, utcnow

__all__ = ["GUID", "Page", "Repository", "ServiceDatabase", "Session", "UTCDateTime", "get_session",
           "utcnow"]
