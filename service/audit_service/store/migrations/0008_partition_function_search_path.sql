-- audit_ensure_partition runs with the schema owner's rights (SECURITY DEFINER) for the service role, and looked
-- its partition up by an unqualified name, which PostgreSQL resolves in the caller's temporary tables too: a
-- temporary table the service role named audit_events_2031_05 made it report that month's partition as existing
-- without creating it, and every append in that month would have failed. Now every name is qualified with the
-- log's schema, and the function's search path puts temporary tables last (the rule for SECURITY DEFINER).
CREATE OR REPLACE FUNCTION audit_ensure_partition(at timestamptz) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    lower_bound timestamptz := date_trunc('month', at, 'UTC');
    upper_bound timestamptz := lower_bound + interval '1 month';
    partition_name text := 'audit_events_' || to_char(lower_bound AT TIME ZONE 'UTC', 'YYYY_MM');
    log_schema text := current_schema();  -- the first schema of the function's own search path
BEGIN
    IF to_regclass(format('%I.%I', log_schema, partition_name)) IS NULL THEN
        BEGIN
            EXECUTE format('CREATE TABLE %I.%I PARTITION OF %I.audit_events FOR VALUES FROM (%L) TO (%L)',
                           log_schema, partition_name, log_schema, lower_bound, upper_bound);
            EXECUTE format('CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON %I.%I '
                           'FOR EACH STATEMENT EXECUTE FUNCTION %I.audit_reject_mutation()',
                           log_schema, partition_name, log_schema);
        EXCEPTION WHEN duplicate_table THEN
            NULL;  -- another worker created it first
        END;
    END IF;
    RETURN partition_name;
END
$$;

DO $$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION audit_ensure_partition(timestamptz) SET search_path = %I, pg_temp', current_schema()
    );
END
$$;
