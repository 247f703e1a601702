-- Positions are the database's promise too: each position is held by one event, the log head only moves
-- forward, and only onto positions that were just stored, every one of them.
--
-- Until now only the append code kept positions gapless and unique: the service role may UPDATE
-- audit_log_head, so moving it back made the next append reuse positions, and readers already past them never
-- saw the new events. Now:
-- * audit_event_ids (every event ever stored, kept beyond retention) has a unique index on position;
-- * a trigger refuses an UPDATE of audit_log_head unless last_position grows, last_recorded_at does not go
--   back, and the positions after the old head, up to the new one, are each held by exactly one stored event
--   (in audit_event_ids and in audit_events) with none beyond it. Each append moves the head once, after
--   storing its events, so this costs an append transaction a few index probes and a look at its own rows;
-- * the head row cannot be deleted or truncated (a new row would start positions again from 0).
-- Runs as the schema owner. On a log whose stored positions already repeat, leave a hole, or do not end at
-- the head, it refuses with the first such position and changes nothing (see the README: positions).

-- Hold appends while the existing positions are checked and indexed.
SELECT last_position FROM audit_log_head FOR UPDATE;

DO $$
DECLARE
    head bigint := (SELECT last_position FROM audit_log_head);
    repeated record;
    stored record;
    missing bigint;
    hint text := 'each event''s position is part of its hash, so the log cannot be renumbered; the database is left '
        'as it was. See "Guarantees and how they are kept" in the README before going on.';
BEGIN
    BEGIN
        CREATE UNIQUE INDEX audit_event_ids_position ON audit_event_ids (position);
    EXCEPTION WHEN unique_violation THEN
        SELECT position, count(*) AS events, string_agg(event_id::text, ', ' ORDER BY recorded_at, event_id) AS ids,
               count(*) OVER () AS positions
        INTO repeated
        FROM audit_event_ids GROUP BY position HAVING count(*) > 1 ORDER BY position LIMIT 1;
        RAISE EXCEPTION 'the log already repeats positions: position % is held by % events (%), % repeated '
            'position(s) in all', repeated.position, repeated.events, repeated.ids, repeated.positions
            USING ERRCODE = 'unique_violation', HINT = hint;
    END;

    SELECT count(*) AS events, coalesce(max(position), 0) AS last INTO stored FROM audit_event_ids;
    IF stored.last > head THEN
        RAISE EXCEPTION 'the log head is at position %, but events are stored up to position %: the head was '
            'moved back, and the next append would repeat position %', head, stored.last, head + 1
            USING ERRCODE = 'check_violation', HINT = hint;
    END IF;
    IF stored.events <> head THEN
        SELECT coalesce((
            SELECT previous + 1 FROM (
                SELECT position, lag(position, 1, 0::bigint) OVER (ORDER BY position) AS previous
                FROM audit_event_ids
            ) AS run
            WHERE position > previous + 1 ORDER BY position LIMIT 1
        ), stored.last + 1) INTO missing;
        RAISE EXCEPTION 'the log has a hole: no event holds position % (% events are stored at positions 1 to %)',
            missing, stored.events, head
            USING ERRCODE = 'check_violation', HINT = hint;
    END IF;
    stored := NULL;
    SELECT max(position) AS last INTO stored FROM audit_events;
    IF stored.last > head THEN
        RAISE EXCEPTION 'the log head is at position %, but audit_events holds an event at position %: the next '
            'append would repeat it', head, stored.last
            USING ERRCODE = 'check_violation', HINT = hint;
    END IF;
END
$$;

-- Generic plans, made once per session: replanning the queries for each append's values would cost more than
-- running them (their generic plans are index scans of a small range, whatever the values).
CREATE FUNCTION audit_check_log_head() RETURNS trigger
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    appended bigint := NEW.last_position - OLD.last_position;
    stored record;
BEGIN
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

-- Resolve the tables in the log's schema only, never in pg_temp: a temporary table named audit_event_ids must
-- not stand in for the real one.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION audit_check_log_head() SET search_path = %I, pg_temp', current_schema());
END
$$;

CREATE TRIGGER audit_log_head_moves_forward BEFORE UPDATE ON audit_log_head
    FOR EACH ROW EXECUTE FUNCTION audit_check_log_head();
CREATE TRIGGER audit_log_head_kept BEFORE DELETE ON audit_log_head
    FOR EACH ROW EXECUTE FUNCTION audit_reject_mutation();
CREATE TRIGGER audit_log_head_no_truncate BEFORE TRUNCATE ON audit_log_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_mutation();
