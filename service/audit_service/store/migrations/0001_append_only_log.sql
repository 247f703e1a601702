-- The append-only audit log, its de-duplication index, its heads, and the database's own enforcement
-- of immutability. Runs as the schema owner; the service role `audit_service` gets INSERT and SELECT
-- on the log and nothing that could change or remove a stored event.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'audit_service') THEN
        CREATE ROLE audit_service NOLOGIN;
    END IF;
END
$$;

CREATE FUNCTION audit_reject_mutation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

-- One row per stored event. Partitioned by recorded_at (server time, which grows with position), so
-- retention drops whole partitions holding a contiguous range of positions.
CREATE TABLE audit_events (
    position                     bigint      NOT NULL,
    recorded_at                  timestamptz NOT NULL,
    event_id                     uuid        NOT NULL,
    tenant                       text        NOT NULL,
    action                       text        NOT NULL,
    outcome                      smallint    NOT NULL,
    actor_id                     text,
    actor_type                   smallint    NOT NULL,
    actor_slug                   text,
    actor_display_name           text,
    actor_email                  text,
    actor_pat_name               text,
    actor_controller_name        text,
    actor_external_identity_slug text,
    resource_type                text,
    resource_id                  text,
    resource_name                text,
    resource_fqn                 text,
    parent_resource_type         text,
    parent_resource_id           text,
    parent_resource_name         text,
    parent_resource_fqn          text,
    request_route                text,
    request_method               text,
    ip_address                   text,
    user_agent                   text,
    cluster_id                   text,
    workspace_id                 text,
    message                      text,
    metadata                     jsonb,
    change_before                jsonb,
    change_after                 jsonb,
    occurred_at                  timestamptz NOT NULL,
    trace_id                     text,
    span_id                      text,
    prev_hash                    bytea       NOT NULL,
    hash                         bytea       NOT NULL,
    PRIMARY KEY (position, recorded_at)
) PARTITION BY RANGE (recorded_at);

CREATE INDEX audit_events_tenant_position ON audit_events (tenant, position);

CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_reject_mutation();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_mutation();

-- Every event_id ever stored, for idempotency across partitions and beyond retention (a unique key on
-- audit_events would have to include recorded_at, so it could not de-duplicate a late redelivery).
CREATE TABLE audit_event_ids (
    event_id    uuid        PRIMARY KEY,
    position    bigint      NOT NULL,
    recorded_at timestamptz NOT NULL
);
CREATE TRIGGER audit_event_ids_append_only BEFORE UPDATE OR DELETE ON audit_event_ids
    FOR EACH ROW EXECUTE FUNCTION audit_reject_mutation();
CREATE TRIGGER audit_event_ids_no_truncate BEFORE TRUNCATE ON audit_event_ids
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_mutation();

-- The single row every append transaction locks first: it serializes appends, so position order is
-- commit order, and it makes positions gapless.
CREATE TABLE audit_log_head (
    id               boolean     PRIMARY KEY DEFAULT true CHECK (id),
    last_position    bigint      NOT NULL,
    last_recorded_at timestamptz NOT NULL
);
INSERT INTO audit_log_head (last_position, last_recorded_at) VALUES (0, '-infinity');

-- The last hash of each tenant's chain.
CREATE TABLE audit_chain_heads (
    tenant        text   PRIMARY KEY,
    last_position bigint NOT NULL,
    last_hash     bytea  NOT NULL
);

-- Creates the monthly partition holding `at` (with its own TRUNCATE guard: statement triggers are not
-- inherited). SECURITY DEFINER so the service role can extend the log without owning it.
CREATE FUNCTION audit_ensure_partition(at timestamptz) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    lower_bound timestamptz := date_trunc('month', at, 'UTC');
    upper_bound timestamptz := lower_bound + interval '1 month';
    partition_name text := 'audit_events_' || to_char(lower_bound AT TIME ZONE 'UTC', 'YYYY_MM');
BEGIN
    IF to_regclass(partition_name) IS NULL THEN
        BEGIN
            EXECUTE format('CREATE TABLE %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)',
                           partition_name, lower_bound, upper_bound);
            EXECUTE format('CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON %I '
                           'FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_mutation()', partition_name);
        EXCEPTION WHEN duplicate_table THEN
            NULL;  -- another worker created it first
        END;
    END IF;
    RETURN partition_name;
END
$$;
REVOKE ALL ON FUNCTION audit_ensure_partition(timestamptz) FROM PUBLIC;

SELECT audit_ensure_partition(now());
SELECT audit_ensure_partition(now() + interval '1 month');

GRANT SELECT, INSERT ON audit_events, audit_event_ids TO audit_service;
GRANT SELECT, UPDATE ON audit_log_head TO audit_service;
GRANT SELECT, INSERT, UPDATE ON audit_chain_heads TO audit_service;
GRANT EXECUTE ON FUNCTION audit_ensure_partition(timestamptz) TO audit_service;
