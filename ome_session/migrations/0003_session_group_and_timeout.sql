-- The group and the idle timeout become properties of each session, as in OMERO: switching group
-- in one session no longer moves the user's default group (and with it every other session of the
-- user), and one session may idle longer or shorter than the configured default.

-- The group new objects of this session go to; NULL: the user's default group. Whether the user
-- may still use it is judged at every login and resume (a group he has left falls back to his
-- default group), so a removed membership cannot be kept alive through a session.
ALTER TABLE ome_sessions ADD COLUMN group_id bigint REFERENCES groups (id) ON DELETE SET NULL;
CREATE INDEX ome_sessions_group_idx ON ome_sessions (group_id) WHERE group_id IS NOT NULL;

-- Seconds this session may go unused; NULL: the configured session_idle_timeout. At least one
-- second (no session may opt out of idling), and bounded when used by the configured
-- session_max_idle_timeout as it is then, so lowering the maximum shortens every session at once.
ALTER TABLE ome_sessions ADD COLUMN idle_timeout integer CHECK (idle_timeout > 0);

-- session_max_idle_timeout is judged like the other timeouts the login statements read. No stored
-- row holds that name yet (the configuration refuses names it does not declare).
CREATE OR REPLACE FUNCTION ome_session_config_valid(name text, value jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE
    WHEN name = 'super_user' THEN jsonb_typeof(value) = 'number' AND value::text ~ '^[0-9]{1,18}$'
    WHEN name IN ('session_idle_timeout', 'session_max_lifetime', 'session_max_idle_timeout') THEN
        CASE WHEN jsonb_typeof(value) = 'number' AND value::text ~ '^[0-9]{1,10}$'
             THEN value::text::bigint <= 2147483647 ELSE false END
    WHEN name = 'allow_guest_access' THEN jsonb_typeof(value) = 'boolean'
    ELSE true
END
$$;
