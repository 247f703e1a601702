-- Destinations (issue 17): where alerts are delivered (webhook) and the tenant's events streamed (http,
-- splunk_hec, syslog), each a durable subscription of the reactor.
--
-- `destinations` is a read model of the destination-change events in the log (resource type audit.destination,
-- resource id = the name, change.after = the destination as JSON WITHOUT its secret), written in the same
-- transaction as the event and rebuilt from audit_resource_heads like alert_rules. Secrets are not in the log:
-- the secret and the values of the custom headers (which may carry credentials) live in destination_secrets
-- only (never returned, never logged: the log and the read model hold "[MASKED]"), which a rebuild keeps.
-- destination_state is each subscription's checkpoint and health; delivery_attempts records every attempt.

CREATE TABLE destinations (
    tenant        text   NOT NULL,
    name          text   NOT NULL,
    revision      bigint NOT NULL CHECK (revision > 0),
    kind          text   NOT NULL CHECK (kind IN ('webhook', 'http', 'splunk_hec', 'syslog')),
    destination   jsonb  NOT NULL,  -- the Destination as JSON, exactly the log's change.after
    last_position bigint NOT NULL,  -- the position of the destination's latest event in the log
    PRIMARY KEY (tenant, name)
);

CREATE TABLE destination_secrets (
    tenant text NOT NULL,
    name   text NOT NULL,
    secret  text  NOT NULL DEFAULT '',
    headers jsonb NOT NULL DEFAULT '{}',  -- {name: value} of the custom request headers
    PRIMARY KEY (tenant, name)
);

CREATE TABLE destination_state (
    tenant               text        NOT NULL,
    name                 text        NOT NULL,
    checkpoint           bigint      NOT NULL CHECK (checkpoint >= 0),  -- log position, or alerts.seq (webhook)
    generation           bigint      NOT NULL,  -- the id of the transaction that (re)started it (creation, replay):
                                                -- never repeats, so a delivery in flight cannot overwrite a newer start
    consecutive_failures bigint      NOT NULL DEFAULT 0,
    last_error           text        NOT NULL DEFAULT '',
    last_attempt_at      timestamptz,
    last_success_at      timestamptz,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE delivery_attempts (
    tenant       text        NOT NULL,
    destination  text        NOT NULL,
    seq          bigint      GENERATED ALWAYS AS IDENTITY,
    delivery_id  text        NOT NULL,  -- the alert's id, or "<first>-<last>" positions of a batch
    attempt      integer     NOT NULL,
    outcome      smallint    NOT NULL,  -- audit.v1.AttemptOutcome
    http_status  integer     NOT NULL DEFAULT 0,
    error        text        NOT NULL DEFAULT '',
    attempted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    duration_ms  bigint      NOT NULL,
    items        integer     NOT NULL,
    PRIMARY KEY (tenant, destination, seq)
);

-- The destinations of the rule that raised an alert, as they were then: where the alert is delivered.
ALTER TABLE alerts ADD COLUMN destinations text[] NOT NULL DEFAULT '{}';
CREATE INDEX alerts_by_tenant_destination ON alerts USING gin (destinations);

GRANT SELECT, INSERT, UPDATE, DELETE ON destinations, destination_secrets, destination_state TO audit_service;
GRANT SELECT, INSERT, DELETE ON delivery_attempts TO audit_service;
