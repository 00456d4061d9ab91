"""omero-py and the Ice runtime, imported once, with an error that says how to install them."""

from __future__ import annotations

from ...errors import ConfigurationError

try:
    import Glacier2
    import Ice
    import omero
    import omero.clients
    import omero.cmd
    import omero.model.enums
    from omero.rtypes import rlong, unwrap
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ConfigurationError(
        f"the OMERO backend needs the [omero] extra ({exc}): run scripts/install-omero-extra"
    ) from exc

__all__ = ["Glacier2", "Ice", "omero", "rlong", "unwrap"]
