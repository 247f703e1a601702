-- The free-text search index (GIN, trigrams) takes each new event's entries into its pending list (fastupdate,
-- PostgreSQL's default) and merges the list into the index when it outgrows gin_pending_list_limit (4 MB): the
-- append that overflowed it merged some 1,300 events' entries inside the log's serialized section, while every
-- other append waited on the log head. audit_clean_search_pending() merges the pending lists of the newest two
-- partitions (the ones appends go to); the ingest worker calls it on a connection of its own after each append
-- (store/search_index.py), so the merge runs beside the next append rather than inside one.
--
-- Searches read the pending list as well as the index: their answers are exact before and after a merge. An
-- append still merges by itself when the list outgrows the limit and no merge is running (a worker stopped
-- between its append and the merge, or one that cannot call this function).
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
        JOIN pg_class AS partition ON partition.oid = index.indrelid
        WHERE partition_index.inhparent = 'audit_events_search'::regclass
        ORDER BY partition.relname DESC  -- audit_events_YYYY_MM: the newest months first
        LIMIT 2
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
