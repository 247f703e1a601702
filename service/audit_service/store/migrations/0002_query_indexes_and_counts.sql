-- What the query API needs: indexes for the real filters, free-text search, and the hourly count projection.

-- Free-text search: one lower-cased text per event over the searched columns, joined by a control character
-- (search terms may not contain one, so a term never matches across two columns), with a trigram index
-- serving LIKE '%term%'. Lower-casing follows Unicode where the server can (pg_c_utf8, PostgreSQL 17+),
-- whatever the database's locale.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 170000 THEN
        EXECUTE 'CREATE FUNCTION audit_search_fold(value text) RETURNS text
                 LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
                 RETURN lower(value COLLATE "pg_c_utf8")';
    ELSE
        EXECUTE 'CREATE FUNCTION audit_search_fold(value text) RETURNS text
                 LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
                 RETURN lower(value)';
    END IF;
END
$$;

CREATE FUNCTION audit_search_text(
    message text, action text, resource_name text, resource_fqn text,
    actor_slug text, actor_email text, actor_display_name text
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN audit_search_fold(
    coalesce(message, '') || chr(31) || action || chr(31) || coalesce(resource_name, '') || chr(31)
    || coalesce(resource_fqn, '') || chr(31) || coalesce(actor_slug, '') || chr(31)
    || coalesce(actor_email, '') || chr(31) || coalesce(actor_display_name, '')
);

CREATE INDEX audit_events_search ON audit_events USING gin (
    audit_search_text(message, action, resource_name, resource_fqn, actor_slug, actor_email, actor_display_name)
    gin_trgm_ops
);

-- Keyset pages in position order for the common filters (and for a non-admin caller, scoped to its actor).
CREATE INDEX audit_events_tenant_action ON audit_events (tenant, action, position);
CREATE INDEX audit_events_tenant_actor ON audit_events (tenant, actor_id, position);
CREATE INDEX audit_events_tenant_resource ON audit_events (tenant, resource_id, position);
CREATE INDEX audit_events_tenant_occurred ON audit_events (tenant, occurred_at);
CREATE INDEX audit_events_trace ON audit_events (trace_id) WHERE trace_id IS NOT NULL;

-- A projection of the log: events per tenant, UTC hour of occurred_at, action, resource type, outcome and
-- actor type. Written in the same transaction as the events it counts; `audit-service rebuild-projections`
-- recomputes it from the log. Not part of the evidence, so not append-only.
CREATE TABLE audit_counts_hourly (
    tenant        text        NOT NULL,
    hour          timestamptz NOT NULL,
    action        text        NOT NULL,
    resource_type text,
    outcome       smallint    NOT NULL,
    actor_type    smallint    NOT NULL,
    events        bigint      NOT NULL CHECK (events > 0),
    -- Covering: a count over a time range is an index-only scan once pages are all-visible.
    CONSTRAINT audit_counts_hourly_key
        UNIQUE NULLS NOT DISTINCT (tenant, hour, action, resource_type, outcome, actor_type) INCLUDE (events)
);

GRANT SELECT, INSERT, UPDATE ON audit_counts_hourly TO audit_service;
