-- audit_ensure_partition runs with the schema owner's rights (SECURITY DEFINER) for the service role, and looked
-- its partition up by an unqualified name, which PostgreSQL resolves in the caller's temporary tables too: a
-- temporary table the service role named audit_events_2031_05 made it report that month's partition as existing
-- without creating it, and every append in that month would have failed. Now every name is qualified with the
-- log's schema, and the function's search path puts temporary tables last (the rule for SECURITY DEFINER).
--
-- The same squatting worked with a real table where PUBLIC may create in the log's schema (databases created
-- before PostgreSQL 15, or upgraded from one, grant it on schema public): so that right is revoked here (the
-- service role never creates anything itself: partitions are created by this function), and a relation found under
-- a partition's name that is not a partition of audit_events is refused, naming it, instead of being taken for one.
CREATE OR REPLACE FUNCTION audit_ensure_partition(at timestamptz) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    lower_bound timestamptz := date_trunc('month', at, 'UTC');
    upper_bound timestamptz := lower_bound + interval '1 month';
    partition_name text := 'audit_events_' || to_char(lower_bound AT TIME ZONE 'UTC', 'YYYY_MM');
    log_schema text := current_schema();  -- the first schema of the function's own search path
    found regclass := to_regclass(format('%I.%I', log_schema, partition_name));
BEGIN
    IF found IS NOT NULL AND NOT EXISTS (
        SELECT FROM pg_inherits
        WHERE inhrelid = found AND inhparent = format('%I.audit_events', log_schema)::regclass
    ) THEN
        RAISE EXCEPTION '%.% exists but is not a partition of the audit log: appends recorded in that month cannot be '
            'stored until it is renamed or dropped', log_schema, partition_name
            USING ERRCODE = 'duplicate_table';
    END IF;
    IF found IS NULL THEN
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
    EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', current_schema());
END
$$;
