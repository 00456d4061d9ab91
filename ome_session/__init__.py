"""ome-session: one login session per process, the OME session model for Python.

Log in with ``SessionManager().create_session(user, password)``; reach the session anywhere as
``Session.instance()``; call ``Session.idle()`` between the requests of a persistent process.
"""

from __future__ import annotations

from .configuration import Configuration
from .dbobject import Column, DBObject, HasMany, Reference
from .factory import Factory
from .manager import SessionManager
from .model import (
    Dataset,
    DatasetImageMap,
    Experimenter,
    ExperimenterGroupMap,
    Group,
    Image,
    Project,
    ProjectDatasetMap,
    UserState,
)
from .session import Session

__version__ = "0.1.0"

__all__ = [
    "Column",
    "Configuration",
    "DBObject",
    "Dataset",
    "DatasetImageMap",
    "Experimenter",
    "ExperimenterGroupMap",
    "Factory",
    "Group",
    "HasMany",
    "Image",
    "Project",
    "ProjectDatasetMap",
    "Reference",
    "Session",
    "SessionManager",
    "UserState",
]
