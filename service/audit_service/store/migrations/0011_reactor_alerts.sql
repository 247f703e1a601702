-- Alerts (issue 17): what the reactor raised from the log, and where it has read the log to.
--
-- The reactor is a durable catch-up subscription on the log: it reads committed events after its checkpoint,
-- evaluates the enabled alert rules, and in ONE transaction inserts the alerts (ON CONFLICT DO NOTHING: their ids
-- are deterministic) and advances its checkpoint. After a crash it resumes from the checkpoint: an alert is
-- neither lost nor stored twice.

CREATE TABLE reactor_checkpoints (
    subscription text        PRIMARY KEY,
    position     bigint      NOT NULL CHECK (position >= 0),  -- the last log position evaluated
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Append-only like the log: an alert once raised is never changed nor removed by the service.
CREATE TABLE alerts (
    tenant          text        NOT NULL,
    id              uuid        NOT NULL,  -- UUIDv5 of (rule, group key, window) or (rule, position): deterministic
    rule_id         uuid        NOT NULL,
    rule_revision   bigint      NOT NULL,
    severity        smallint    NOT NULL,
    group_key       text        NOT NULL,
    window_start    timestamptz NOT NULL,  -- recorded_at of the oldest event that raised it
    window_end      timestamptz NOT NULL,  -- recorded_at of the newest (the one that raised it)
    message         text        NOT NULL,
    event_positions bigint[]    NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    seq             bigint      GENERATED ALWAYS AS IDENTITY,  -- storage order (keyset paging of ListAlerts)
    PRIMARY KEY (tenant, id)
);

CREATE INDEX alerts_by_tenant_seq ON alerts (tenant, seq);
-- The reactor restores each group's latest alert on start.
CREATE INDEX alerts_by_rule_group ON alerts (rule_id, group_key, window_end);

CREATE TRIGGER alerts_append_only BEFORE UPDATE OR DELETE ON alerts
    FOR EACH ROW EXECUTE FUNCTION audit_reject_mutation();
CREATE TRIGGER alerts_no_truncate BEFORE TRUNCATE ON alerts
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_mutation();

GRANT SELECT, INSERT ON alerts TO audit_service;
GRANT SELECT, INSERT, UPDATE ON reactor_checkpoints TO audit_service;
