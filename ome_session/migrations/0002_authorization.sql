-- Authorization: the configuration values that decide who may log in can no longer hold what the
-- login and resume statements cannot use, and sessions opened by su_session() are marked.

-- Whether a stored configuration value is usable by the statements that decide logins. One
-- definition, used by the CHECK constraint below and, through the generated column ``usable``, by
-- those statements (which ignore a value stored before the constraint existed rather than fail on
-- it). Other names are not judged here: the Python side validates them on write.
CREATE FUNCTION ome_session_config_valid(name text, value jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE
    -- an experimenter id: a non-negative bigint, written as a plain JSON integer
    WHEN name = 'super_user' THEN jsonb_typeof(value) = 'number' AND value::text ~ '^[0-9]{1,18}$'
    -- seconds, 0 (no limit) to 2^31 - 1: beyond that timestamp arithmetic overflows. Nested CASEs,
    -- because SQL does not promise to test the pattern before the cast
    WHEN name IN ('session_idle_timeout', 'session_max_lifetime') THEN
        CASE WHEN jsonb_typeof(value) = 'number' AND value::text ~ '^[0-9]{1,10}$'
             THEN value::text::bigint <= 2147483647 ELSE false END
    WHEN name = 'allow_guest_access' THEN jsonb_typeof(value) = 'boolean'
    ELSE true
END
$$;

-- Plain SQL cannot store a value that would lock logins out. An install that already holds one
-- still upgrades: the constraint is then left NOT VALID (it holds for every new write), the
-- login statements ignore the old value, and reading the configuration logs an error naming it.
ALTER TABLE configuration
    ADD CONSTRAINT configuration_deciding_values_valid CHECK (ome_session_config_valid(name, value)) NOT VALID;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM configuration WHERE NOT ome_session_config_valid(name, value)) THEN
        RAISE WARNING 'configuration holds values the login statements ignore: %',
            (SELECT string_agg(name, ', ') FROM configuration WHERE NOT ome_session_config_valid(name, value));
    ELSE
        ALTER TABLE configuration VALIDATE CONSTRAINT configuration_deciding_values_valid;
    END IF;
END
$$;

-- The same judgement, stored with each row when it is written: the login and resume statements
-- read it instead of evaluating the function on every request.
ALTER TABLE configuration
    ADD COLUMN usable boolean NOT NULL GENERATED ALWAYS AS (ome_session_config_valid(name, value)) STORED;

-- Sessions opened by su_session() (as the super user, without a password).
ALTER TABLE ome_sessions ADD COLUMN su boolean NOT NULL DEFAULT false;
