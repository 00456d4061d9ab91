-- Every change that decides whether a session key is accepted, or what its user may see, is
-- announced by the database itself on the channel ome_session when its transaction commits,
-- whoever makes it: this library, the command, another host, plain SQL in psql. Processes that
-- keep resumed sessions in memory listen and drop what a message names.
--
-- A message is small: 'u:<ids>' (experimenters, comma-separated: their sessions, and the sessions
-- they opened with sudo, must be checked again), 's:<ids>' (session rows), or '*' (everything: the
-- configuration changed, a table was truncated, or a change touched too many rows to list).
-- Triggers are per statement, with transition tables, so a bulk change sends one message, and
-- identical messages of one transaction are folded by PostgreSQL into one.

CREATE FUNCTION ome_session_announce(kind text, ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(ids) > 200 THEN
        PERFORM pg_notify('ome_session', '*');
    ELSIF cardinality(ids) > 0 THEN
        PERFORM pg_notify('ome_session', kind || ':' || array_to_string(ids, ','));
    END IF;
END
$$;

-- Session rows: closed, expiry, owner, the session's own group and timeout, any column but a
-- last_access moved forward (what using a session does: resumes write it behind, and a process
-- checks idle expiry in memory too), a last_access moved back (a session made older), and deleted
-- rows. New rows are nobody's yet.
CREATE FUNCTION ome_session_sessions_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        PERFORM ome_session_announce('s', (
            SELECT array_agg(DISTINCT o.id ORDER BY o.id) FROM old_rows o JOIN new_rows n ON n.id = o.id
            WHERE to_jsonb(n) - 'last_access' IS DISTINCT FROM to_jsonb(o) - 'last_access'
               OR n.last_access < o.last_access));
    ELSE
        PERFORM ome_session_announce('s', (SELECT array_agg(DISTINCT o.id ORDER BY o.id) FROM old_rows o));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER ome_sessions_updated AFTER UPDATE ON ome_sessions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ome_session_sessions_changed();
CREATE TRIGGER ome_sessions_deleted AFTER DELETE ON ome_sessions
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ome_session_sessions_changed();

-- Users: active, admin, guest, default group, any other column, and deleted users.
CREATE FUNCTION ome_session_experimenters_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        PERFORM ome_session_announce('u', (
            SELECT array_agg(DISTINCT o.id ORDER BY o.id) FROM old_rows o JOIN new_rows n ON n.id = o.id
            WHERE to_jsonb(n) IS DISTINCT FROM to_jsonb(o)));
    ELSE
        PERFORM ome_session_announce('u', (SELECT array_agg(DISTINCT o.id ORDER BY o.id) FROM old_rows o));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER experimenters_updated AFTER UPDATE ON experimenters
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ome_session_experimenters_changed();
CREATE TRIGGER experimenters_deleted AFTER DELETE ON experimenters
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ome_session_experimenters_changed();

-- Memberships, added or removed: the member's rights change.
CREATE FUNCTION ome_session_memberships_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM ome_session_announce('u', (SELECT array_agg(DISTINCT n.experimenter_id ORDER BY n.experimenter_id)
                                           FROM new_rows n));
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM ome_session_announce('u', (SELECT array_agg(DISTINCT o.experimenter_id ORDER BY o.experimenter_id)
                                           FROM old_rows o));
    ELSE
        PERFORM ome_session_announce('u', (SELECT array_agg(DISTINCT x ORDER BY x) FROM (
            SELECT experimenter_id FROM old_rows UNION ALL SELECT experimenter_id FROM new_rows) AS m (x)));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER experimenter_group_map_inserted AFTER INSERT ON experimenter_group_map
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ome_session_memberships_changed();
CREATE TRIGGER experimenter_group_map_updated AFTER UPDATE ON experimenter_group_map
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ome_session_memberships_changed();
CREATE TRIGGER experimenter_group_map_deleted AFTER DELETE ON experimenter_group_map
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ome_session_memberships_changed();

-- Group leaders: a group made, deleted, or given another leader changes what its old and new
-- leaders may do (and what the sessions they opened as members may do).
CREATE FUNCTION ome_session_groups_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM ome_session_announce('u', (SELECT array_agg(DISTINCT n.leader_id ORDER BY n.leader_id)
                                           FROM new_rows n WHERE n.leader_id IS NOT NULL));
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM ome_session_announce('u', (SELECT array_agg(DISTINCT o.leader_id ORDER BY o.leader_id)
                                           FROM old_rows o WHERE o.leader_id IS NOT NULL));
    ELSE
        PERFORM ome_session_announce('u', (SELECT array_agg(DISTINCT x ORDER BY x) FROM (
            SELECT o.leader_id FROM old_rows o JOIN new_rows n ON n.id = o.id
            WHERE n.leader_id IS DISTINCT FROM o.leader_id
            UNION ALL
            SELECT n.leader_id FROM old_rows o JOIN new_rows n ON n.id = o.id
            WHERE n.leader_id IS DISTINCT FROM o.leader_id) AS l (x) WHERE x IS NOT NULL));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER groups_inserted AFTER INSERT ON groups
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ome_session_groups_changed();
CREATE TRIGGER groups_updated AFTER UPDATE ON groups
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ome_session_groups_changed();
CREATE TRIGGER groups_deleted AFTER DELETE ON groups
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ome_session_groups_changed();

-- The configuration (idle timeout, maximum lifetime, guest access, the super user, and whatever
-- is added later) and any truncation: everything is checked again.
CREATE FUNCTION ome_session_everything_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ome_session', '*');
    RETURN NULL;
END
$$;

CREATE TRIGGER configuration_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON configuration
    FOR EACH STATEMENT EXECUTE FUNCTION ome_session_everything_changed();
CREATE TRIGGER ome_sessions_truncated AFTER TRUNCATE ON ome_sessions
    FOR EACH STATEMENT EXECUTE FUNCTION ome_session_everything_changed();
CREATE TRIGGER experimenters_truncated AFTER TRUNCATE ON experimenters
    FOR EACH STATEMENT EXECUTE FUNCTION ome_session_everything_changed();
CREATE TRIGGER experimenter_group_map_truncated AFTER TRUNCATE ON experimenter_group_map
    FOR EACH STATEMENT EXECUTE FUNCTION ome_session_everything_changed();
CREATE TRIGGER groups_truncated AFTER TRUNCATE ON groups
    FOR EACH STATEMENT EXECUTE FUNCTION ome_session_everything_changed();
