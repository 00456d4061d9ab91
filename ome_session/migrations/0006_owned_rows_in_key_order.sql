-- Reads follow the rows a user may see. An owned row is readable through its owner or its group,
-- and every ordered read ends with the primary key as its tie-break, so the owned tables are read
-- by (owner, id) and (group, id): "this user's rows" or "this group's rows", and "their first n in
-- key order" for a limited read, straight from an index. These serve every lookup the
-- single-column indexes did (the leading column alone), so they replace them.
CREATE INDEX projects_owner_key_idx ON projects (owner_id, id);
CREATE INDEX projects_group_key_idx ON projects (group_id, id);
DROP INDEX projects_owner_idx, projects_group_idx;

CREATE INDEX datasets_owner_key_idx ON datasets (owner_id, id);
CREATE INDEX datasets_group_key_idx ON datasets (group_id, id);
DROP INDEX datasets_owner_idx, datasets_group_idx;

CREATE INDEX images_owner_key_idx ON images (owner_id, id);
CREATE INDEX images_group_key_idx ON images (group_id, id);
DROP INDEX images_owner_idx, images_group_idx;
