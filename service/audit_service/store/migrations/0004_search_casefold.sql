-- Free-text search folds case once, in the database, for the stored text and the search term alike.
--
-- 0002 folded the stored text with lower(), and the service lower-cased search terms in Python first; the two
-- disagree on some letters (Python lowers a word-final capital sigma to 'ς', PostgreSQL to 'σ'), so searching
-- for an event's own words ("ΟΔΟΣ") could miss it. Now terms are sent as typed and folded by the same
-- function as the text. On PostgreSQL 18+ that function is Unicode case folding, casefold(), so 'Σ', 'σ' and
-- 'ς' all fold to 'σ', then lower(), so a Turkish 'İ' still folds to 'i' (simple case folding leaves it).
-- The search index holds folded text, so it is rebuilt (a full pass over the log).
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 180000 THEN
        EXECUTE 'CREATE OR REPLACE FUNCTION audit_search_fold(value text) RETURNS text
                 LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
                 RETURN lower(casefold(value COLLATE "pg_c_utf8") COLLATE "pg_c_utf8")';
    END IF;
END
$$;

DROP INDEX audit_events_search;
CREATE INDEX audit_events_search ON audit_events USING gin (
    audit_search_text(message, action, resource_name, resource_fqn, actor_slug, actor_email, actor_display_name)
    gin_trgm_ops
);
