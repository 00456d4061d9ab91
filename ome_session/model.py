"""The core OME classes, declared like any user class (see ``dbobject``)."""

from __future__ import annotations

import datetime

from .dbobject import Column, DBObject, HasMany, Reference


class Group(DBObject):
    __table__ = "groups"
    __ome_name__ = "OME::SemanticType::BootstrapGroup"
    name = Column(str, nullable=False)
    leader = Reference("Experimenter")
    contact = Reference("Experimenter")
    member_links = HasMany("ExperimenterGroupMap", via="group")


class Experimenter(DBObject):
    __table__ = "experimenters"
    __ome_name__ = "OME::SemanticType::BootstrapExperimenter"
    ome_name = Column(str, nullable=False)
    first_name = Column(str, nullable=False, default="")
    last_name = Column(str, nullable=False, default="")
    email = Column(str)
    institution = Column(str)
    data_dir = Column(str)
    password_hash = Column(str, private=True)  # written only by ome_session.admin.set_password
    group = Reference("Group")
    is_guest = Column(bool, nullable=False, default=False)
    is_admin = Column(bool, nullable=False, default=False)
    active = Column(bool, nullable=False, default=True)
    group_links = HasMany("ExperimenterGroupMap", via="experimenter")

    def __repr__(self) -> str:
        return f"<Experimenter id={self.id} {self.ome_name!r}>"


class ExperimenterGroupMap(DBObject):
    __table__ = "experimenter_group_map"
    __ome_name__ = "OME::SemanticType::BootstrapGroupMembership"
    __primary_key__ = ("experimenter_id", "group_id")
    id = None  # type: ignore[assignment]
    experimenter = Reference("Experimenter", nullable=False)
    group = Reference("Group", nullable=False)


class UserState(DBObject):
    """What persists across logins: the user's current project and dataset, view preferences."""

    __table__ = "user_states"
    __ome_name__ = "OME::UserState"
    __primary_key__ = ("experimenter_id",)
    id = None  # type: ignore[assignment]
    experimenter = Reference("Experimenter", nullable=False)
    project = Reference("Project")
    dataset = Reference("Dataset")
    image_view = Column(str)
    feature_view = Column(str)


class Project(DBObject):
    __table__ = "projects"
    __ome_name__ = "OME::Project"
    name = Column(str, nullable=False)
    description = Column(str)
    owner = Reference("Experimenter")
    group = Reference("Group")
    dataset_links = HasMany("ProjectDatasetMap", via="project")


class Dataset(DBObject):
    __table__ = "datasets"
    __ome_name__ = "OME::Dataset"
    name = Column(str, nullable=False)
    description = Column(str)
    locked = Column(bool, nullable=False, default=False)
    owner = Reference("Experimenter")
    group = Reference("Group")
    project_links = HasMany("ProjectDatasetMap", via="dataset")
    image_links = HasMany("DatasetImageMap", via="dataset")


class Image(DBObject):
    __table__ = "images"
    __ome_name__ = "OME::Image"
    name = Column(str, nullable=False)
    description = Column(str)
    created = Column(datetime.datetime, nullable=False)
    owner = Reference("Experimenter")
    group = Reference("Group")
    dataset_links = HasMany("DatasetImageMap", via="image")


class ProjectDatasetMap(DBObject):
    __table__ = "project_dataset_map"
    __ome_name__ = "OME::Project::DatasetMap"
    __link__ = ("project", "dataset")
    project = Reference("Project", nullable=False)
    dataset = Reference("Dataset", nullable=False)


class DatasetImageMap(DBObject):
    __table__ = "dataset_image_map"
    __ome_name__ = "OME::Image::DatasetMap"
    __link__ = ("dataset", "image")
    dataset = Reference("Dataset", nullable=False)
    image = Reference("Image", nullable=False)
