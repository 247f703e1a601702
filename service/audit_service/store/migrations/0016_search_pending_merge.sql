-- The free-text search index (GIN, trigrams) takes each new event's entries into its pending list (fastupdate,
-- PostgreSQL's default) and merges the list into the index when it outgrows gin_pending_list_limit (4 MB): the
-- append that overflowed it merged some 2,000 events' entries inside the log's serialized section, while every
-- other append waited on the log head. audit_clean_search_pending() merges the pending list of the partition
-- appends go to (the log head's month, and the month before during a month's first day); the ingest worker calls
-- it on a connection of its own every 1,500 appended events (store/search_index.py), so the merge runs beside the
-- appends rather than inside one. Partitions created ahead, or appended to with a recorded_at of the past
-- (imports), are left to PostgreSQL's own merges.
--
-- Searches read the pending list as well as the index: their answers are exact before and after a merge. An
-- append still merges by itself when the list outgrows the limit and no merge is running (a worker stopped
-- before its merge, or one that cannot call this function).
CREATE FUNCTION audit_clean_search_pending() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    search_index regclass;
    merged bigint := 0;
BEGIN
    -- One merge at a time: another worker's call returns at once instead of queueing behind it (the merge in
    -- progress takes the entries it adds as well).
    IF NOT pg_try_advisory_xact_lock(4707744067222980942) THEN  -- the bytes of "AUDITGIN"
        RETURN 0;
    END IF;
    FOR search_index IN
        SELECT partition_index.inhrelid::regclass
        FROM pg_inherits AS partition_index
        JOIN pg_index AS index ON index.indexrelid = partition_index.inhrelid
        WHERE partition_index.inhparent = 'audit_events_search'::regclass
          AND index.indrelid IN (
              -- the month appends go to (the log head's), and the one before it just after a month begins
              SELECT to_regclass('audit_events_' || to_char(month AT TIME ZONE 'UTC', 'YYYY_MM'))
              FROM audit_log_head,
                   LATERAL (VALUES (date_trunc('month', last_recorded_at, 'UTC')),
                                   (date_trunc('month', last_recorded_at - interval '1 day', 'UTC'))) AS m (month)
          )
    LOOP
        merged := merged + gin_clean_pending_list(search_index);
    END LOOP;
    RETURN merged;
END
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION audit_clean_search_pending() SET search_path = %I, pg_temp', current_schema());
END
$$;

REVOKE ALL ON FUNCTION audit_clean_search_pending() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_clean_search_pending() TO audit_service;
