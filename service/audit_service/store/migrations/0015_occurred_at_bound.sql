-- A bound that lets a time filter skip the log's old partitions (issue 18: the console's first page).
--
-- The log is partitioned by recorded_at, but filters select on occurred_at, the producer's clock: a page of
-- "occurred_at >= X", newest first, merged the partitions in position order and so scanned every old partition
-- whole before it could answer (0.13-0.59 s on 1M events). audit_log_head.max_occurred_after_recorded is the
-- most by which any stored event's occurred_at exceeds its recorded_at (0 when none does). A statement trigger
-- on the log keeps it, in the statement that stores the events (the appender's COPY, a bulk load, a row inserted
-- by hand alike), and the head's guard lets it only grow. For every stored event, then,
--     occurred_at >= X  implies  recorded_at >= X - max_occurred_after_recorded,
-- and the queries add that condition on the partition key: exact, never a lost event, and old partitions pruned.
SELECT last_position FROM audit_log_head FOR UPDATE;
ALTER TABLE audit_log_head ADD COLUMN max_occurred_after_recorded interval NOT NULL DEFAULT '0'
    CHECK (max_occurred_after_recorded >= '0');

-- The head's guard (migration 0007) as it was, and the bound: it only grows (lowered, it would hide events from
-- time filters), and may grow alone.
CREATE OR REPLACE FUNCTION audit_check_log_head() RETURNS trigger
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    appended bigint := NEW.last_position - OLD.last_position;
    stored record;
BEGIN
    -- The bound only grows: lowered, it would hide events from time filters.
    IF NEW.max_occurred_after_recorded < OLD.max_occurred_after_recorded THEN
        RAISE EXCEPTION 'the log head only moves forward: max_occurred_after_recorded % -> % is not allowed',
            OLD.max_occurred_after_recorded, NEW.max_occurred_after_recorded
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF (NEW.last_position, NEW.last_recorded_at) = (OLD.last_position, OLD.last_recorded_at)
            AND NEW.max_occurred_after_recorded > OLD.max_occurred_after_recorded THEN
        RETURN NEW; -- the bound raised by the events being stored (or by this migration), nothing else
    END IF;
    IF NEW.last_position <= OLD.last_position THEN
        RAISE EXCEPTION 'the log head only moves forward: last_position % -> % is not allowed',
            OLD.last_position, NEW.last_position
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.last_recorded_at < OLD.last_recorded_at THEN
        RAISE EXCEPTION 'the log head only moves forward: last_recorded_at % -> % is not allowed',
            OLD.last_recorded_at, NEW.last_recorded_at
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- Nothing stored beyond the new head, and each position after the old head held by exactly one event, in
    -- audit_event_ids (a unique index on position: a count of the range says none is missing) and in the log
    -- (no unique key on position alone: distinct positions are counted too). Index probes and the new rows.
    SELECT (SELECT max(position) FROM audit_event_ids) AS ids_last,
           (SELECT count(*) FROM audit_event_ids
            WHERE position > OLD.last_position AND position <= NEW.last_position) AS ids_held,
           (SELECT max(position) FROM audit_events) AS events_last,
           count(*) AS events_held,
           count(DISTINCT position) AS events_positions
    INTO stored
    FROM audit_events WHERE position > OLD.last_position AND position <= NEW.last_position;
    IF stored.ids_last IS DISTINCT FROM NEW.last_position OR stored.ids_held <> appended THEN
        RAISE EXCEPTION 'the log head must move to the last stored position, with every position up to it held: '
            'it moves from % to %, but audit_event_ids holds % of those positions and ends at position %',
            OLD.last_position, NEW.last_position, stored.ids_held, stored.ids_last
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF stored.events_last IS DISTINCT FROM NEW.last_position OR stored.events_held <> appended
            OR stored.events_positions <> appended THEN
        RAISE EXCEPTION 'the log head must move to the last stored position, with every position up to it held '
            'once: it moves from % to %, but audit_events holds % events at % of those positions and ends at '
            'position %', OLD.last_position, NEW.last_position, stored.events_held, stored.events_positions,
            stored.events_last
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

-- CREATE OR REPLACE resets the function's settings: its tables are resolved in the log's schema only, as before.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION audit_check_log_head() SET search_path = %I, pg_temp', current_schema());
END
$$;

-- Raised by every statement that stores events, by what they hold (a transition table: one pass over the new
-- rows, and an UPDATE of the head only when the bound grows, which events recorded after they occurred never do).
CREATE FUNCTION audit_track_occurred_bound() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE audit_log_head SET max_occurred_after_recorded = stored.bound
    FROM (SELECT max(occurred_at - recorded_at) AS bound FROM stored_events) AS stored
    WHERE stored.bound > max_occurred_after_recorded;
    RETURN NULL;
END
$$;
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION audit_track_occurred_bound() SET search_path = %I, pg_temp', current_schema());
END
$$;
CREATE TRIGGER audit_events_occurred_bound AFTER INSERT ON audit_events
    REFERENCING NEW TABLE AS stored_events FOR EACH STATEMENT EXECUTE FUNCTION audit_track_occurred_bound();

-- The events stored so far (one scan of the log, once).
UPDATE audit_log_head SET max_occurred_after_recorded = stored.bound
FROM (SELECT max(occurred_at - recorded_at) AS bound FROM audit_events) AS stored
WHERE stored.bound > max_occurred_after_recorded;
