-- A compact count projection for the most common count: a tenant's activity over time, by action.
--
-- audit_counts_hourly holds one row per (tenant, hour, action, resource type, outcome, actor type); at a
-- few dozen events per tenant-hour nearly every event gets its own row, so a month of a tenant's counts
-- reads ~10^4 rows. Here each (tenant, hour) is one row with its events per action, ranked as a histogram
-- bucket lists them (most events first, then by action in code-point order), so the same count reads 720
-- rows that are ready to serve. Written in the same transaction as the events; rebuilt from the log by
-- `audit-service rebuild-projections`. Not part of the evidence, so not append-only.
CREATE TABLE audit_action_counts_hourly (
    tenant  text        NOT NULL,
    hour    timestamptz NOT NULL,
    events  bigint      NOT NULL CHECK (events > 0),
    actions text[]      NOT NULL,
    counts  bigint[]    NOT NULL, -- counts[i] events of actions[i]; they sum to `events`
    PRIMARY KEY (tenant, hour)
);

-- Two rows' per-action counts added up, ranked.
CREATE FUNCTION audit_add_action_counts(
    actions_a text[], counts_a bigint[], actions_b text[], counts_b bigint[], OUT actions text[], OUT counts bigint[]
)
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
BEGIN ATOMIC
    SELECT array_agg(action ORDER BY events DESC, action COLLATE "C"),
           array_agg(events ORDER BY events DESC, action COLLATE "C")
    FROM (
        SELECT action, sum(events)::bigint AS events
        FROM (
            SELECT * FROM unnest(actions_a, counts_a) UNION ALL SELECT * FROM unnest(actions_b, counts_b)
        ) AS both_rows (action, events)
        GROUP BY action
    ) AS summed;
END;

-- Existing events, counted while appends wait on the log head, so none is counted twice or missed.
SELECT last_position FROM audit_log_head FOR UPDATE;

INSERT INTO audit_action_counts_hourly (tenant, hour, events, actions, counts)
SELECT tenant, hour, sum(events),
       array_agg(action ORDER BY events DESC, action COLLATE "C"),
       array_agg(events ORDER BY events DESC, action COLLATE "C")
FROM (
    SELECT tenant, date_bin('1 hour', occurred_at, timestamptz '1970-01-01 00:00:00+00') AS hour, action,
           count(*) AS events
    FROM audit_events
    GROUP BY 1, 2, 3
) AS per_action
GROUP BY tenant, hour;

GRANT SELECT, INSERT, UPDATE ON audit_action_counts_hourly TO audit_service;
