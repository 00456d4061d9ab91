-- A message a session's client may leave on it, as OMERO's Session.message: what the session is
-- for, shown to whoever lists sessions. Nothing decides on it.
ALTER TABLE ome_sessions ADD COLUMN message text;
