-- An event id is registered only at a position an event can hold: 1 or more.
--
-- audit_event_ids registers every event ever stored, and an event whose id is registered is taken for one already
-- stored: it is acknowledged as a duplicate and not stored again. Its positions 1 to the head are each taken (a
-- unique index, migration 0007), and one beyond the head stops the next append, but the service role could still
-- register an id at position 0 or below: an event later published under that id would have been dropped without a
-- trace. Now the database refuses such a row; `audit-service verify` names one stored before.
-- Runs as the schema owner. On a table that already holds such a row, it refuses naming it and changes nothing.

DO $$
DECLARE
    misplaced record;
BEGIN
    SELECT event_id, position INTO misplaced FROM audit_event_ids WHERE position < 1 ORDER BY position LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'audit_event_ids registers event id % at position %, which no event can hold: an event '
            'published under it would never be stored', misplaced.event_id, misplaced.position
            USING ERRCODE = 'check_violation',
                  HINT = 'someone with the service role''s rights inserted it by hand; keep a copy of the database '
                      '(pg_dump) as evidence before going on. See "Guarantees and how they are kept" in the README.';
    END IF;
END
$$;

ALTER TABLE audit_event_ids ADD CONSTRAINT audit_event_ids_position_held CHECK (position >= 1);
