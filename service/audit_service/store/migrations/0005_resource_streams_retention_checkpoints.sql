-- Resource streams, retention archives and signed checkpoints.
--
-- Every event with a resource id belongs to the stream (tenant, resource type, resource id) and carries its
-- revision in that stream; the revision is part of the event's hash (canonical encoding version 2). Events
-- stored before this migration keep no revision; the streams' revisions count them (see the baseline below).

-- Hold appends while the existing log is read.
SELECT last_position FROM audit_log_head FOR UPDATE;

ALTER TABLE audit_events ADD COLUMN stream_revision bigint;

-- A projection of the log: the latest revision and state of every resource stream. The state is the
-- change.after of the stream's latest event that has a change (NULL after one with only change.before, a
-- deletion). The append transaction keeps it and fills change.before from it; `audit-service
-- rebuild-projections` recomputes it from audit_resource_baseline and the log. Not evidence, so not append-only.
CREATE TABLE audit_resource_heads (
    tenant        text   NOT NULL,
    resource_type text   NOT NULL,  -- '' when the events name no resource type
    resource_id   text   NOT NULL,
    revision      bigint NOT NULL CHECK (revision > 0),
    last_position bigint NOT NULL,
    state         jsonb,
    PRIMARY KEY (tenant, resource_type, resource_id)
);

-- The streams as they stood before the oldest event the log still holds: events stored before revisions
-- existed (seeded here) and partitions dropped by retention (folded in by `audit-service retention`). The
-- rebuild starts from it, so it reproduces audit_resource_heads exactly after a purge.
CREATE TABLE audit_resource_baseline (LIKE audit_resource_heads INCLUDING ALL);

INSERT INTO audit_resource_baseline (tenant, resource_type, resource_id, revision, last_position, state)
SELECT tenant, coalesce(resource_type, ''), resource_id, count(*), max(position), NULL
FROM audit_events
WHERE resource_id IS NOT NULL
GROUP BY 1, 2, 3;

UPDATE audit_resource_baseline AS b
SET state = latest.change_after
FROM (
    SELECT DISTINCT ON (tenant, coalesce(resource_type, ''), resource_id)
           tenant, coalesce(resource_type, '') AS resource_type, resource_id, change_after
    FROM audit_events
    WHERE resource_id IS NOT NULL AND (change_before IS NOT NULL OR change_after IS NOT NULL)
    ORDER BY tenant, coalesce(resource_type, ''), resource_id, position DESC
) AS latest
WHERE (b.tenant, b.resource_type, b.resource_id) = (latest.tenant, latest.resource_type, latest.resource_id);

INSERT INTO audit_resource_heads SELECT * FROM audit_resource_baseline;

-- Where each tenant's chain continues after retention dropped its oldest events: the position and hash of
-- the tenant's last archived event, which the first retained event must name as prev_hash. Written by
-- `audit-service retention` in the transaction that drops the partition.
CREATE TABLE audit_chain_anchors (
    tenant   text   PRIMARY KEY,
    position bigint NOT NULL,
    hash     bytea  NOT NULL
);

-- One row per partition archived and dropped by retention, with the archive's manifest.
CREATE TABLE audit_archives (
    partition_name text        PRIMARY KEY,
    range_start    timestamptz NOT NULL,
    range_end      timestamptz NOT NULL,
    first_position bigint,
    last_position  bigint,
    events         bigint      NOT NULL,
    archive_file   text        NOT NULL,
    archive_sha256 text        NOT NULL,
    manifest       jsonb       NOT NULL,
    archived_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER audit_archives_append_only BEFORE UPDATE OR DELETE ON audit_archives
    FOR EACH ROW EXECUTE FUNCTION audit_reject_mutation();

-- Signed checkpoints of the chain heads: `statement` is the canonical JSON that was signed with the Ed25519
-- key `key_id`. A party that keeps them can tell a rewritten history from the real one. A log position may hold
-- several rows (two workers signing it, or a row the service role forged, which verification reports): a row
-- there must never keep the genuine checkpoint out, so the key includes the signature.
CREATE TABLE audit_checkpoints (
    log_position bigint      NOT NULL,
    created_at   timestamptz NOT NULL,
    statement    bytea       NOT NULL,
    key_id       text        NOT NULL,
    signature    bytea       NOT NULL,
    PRIMARY KEY (log_position, signature)
);
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_reject_mutation();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_mutation();

GRANT SELECT, INSERT, UPDATE ON audit_resource_heads TO audit_service;
GRANT SELECT ON audit_resource_baseline, audit_chain_anchors, audit_archives TO audit_service;
GRANT SELECT, INSERT ON audit_checkpoints TO audit_service;
