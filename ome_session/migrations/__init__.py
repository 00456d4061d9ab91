"""Versioned SQL migrations, applied in order by ``ome_session._migrations``."""
