-- Alert rules at their log positions, broken rules' status, and where an alert watch starts (issue 17).
--
-- The reactor evaluates each event with the rules as of that event's position: on (re)start it rebuilds them
-- from the rule-change events at or before its checkpoint (the latest of each rule), then applies each later
-- change where it is in the log. This partial index serves that "latest change of each rule up to P" read
-- without scanning the log; only rule-change events are in it (producers cannot publish those: core/reserved.py).
CREATE INDEX audit_events_alert_rule_changes ON audit_events (tenant, resource_id, position)
    WHERE resource_type = 'audit.alert_rule';

-- Why the reactor cannot evaluate a revision of a rule (a rule stored under older validation that no longer
-- compiles). Written by the reactor as it reaches the revision, cleared (deleted) when a later revision compiles;
-- shown by GetAlertRule/ListAlertRules as broken_reason while the row's revision is the rule's. A status, not a
-- record: the log keeps the rule's history, so rows here are changed and removed.
CREATE TABLE alert_rule_status (
    tenant        text        NOT NULL,
    rule_id       uuid        NOT NULL,
    revision      bigint      NOT NULL,
    broken_reason text        NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, rule_id)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON alert_rule_status TO audit_service;

-- WatchAlerts from_time: the first alert stored at or after a time.
CREATE INDEX alerts_by_tenant_created ON alerts (tenant, created_at, seq);
