-- The size of every event, so that reads are bounded by bytes, not rows.
--
-- A page of 1,000 events is a few hundred KiB when events are small and a quarter of a GiB when they are near
-- the 256 KiB event limit; a reader that never reads held whole pages. Every read now stops once the events it
-- fetched add up to its byte budget, summing this column over the page in PostgreSQL, before any large value is
-- sent. It is the length of the event's canonical encoding (core/records.py), written by the appender.
--
-- Not part of the hashed content and not evidence: it only sizes reads. Events stored before this migration
-- have NULL; reads then measure them from their columns (slower, and only for those events). The log is never
-- rewritten to fill it in.
ALTER TABLE audit_events ADD COLUMN event_bytes integer;
COMMENT ON COLUMN audit_events.event_bytes IS
    'bytes of the event''s canonical encoding, set at append; sizes reads (not hashed, not evidence)';
