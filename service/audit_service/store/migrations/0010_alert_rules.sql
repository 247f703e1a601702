-- Alert rules (issue 17): a read model of the rule-change events in the log.
--
-- The log is the source of truth: every create, update and delete of a rule appends an event (resource type
-- audit.alert_rule, resource id = the rule's id, change.after = the rule as JSON, none on delete) in the same
-- transaction that writes this table. So a rule's row is its resource stream's state in audit_resource_heads,
-- and `audit-service rebuild-projections` recomputes the table from those heads (which it recomputes from the log).
-- The service role may change this table (it is not the log); the log keeps its INSERT and SELECT only.

CREATE TABLE alert_rules (
    tenant        text        NOT NULL,
    id            uuid        NOT NULL,
    revision      bigint      NOT NULL CHECK (revision > 0),
    enabled       boolean     NOT NULL,
    rule          jsonb       NOT NULL,  -- the AlertRule as JSON, exactly the log's change.after
    last_position bigint      NOT NULL,  -- the position of the rule's latest event in the log
    PRIMARY KEY (tenant, id)
);

-- The reactor (a later slice) reads the enabled rules of every tenant.
CREATE INDEX alert_rules_enabled ON alert_rules (tenant) WHERE enabled;

GRANT SELECT, INSERT, UPDATE, DELETE ON alert_rules TO audit_service;
