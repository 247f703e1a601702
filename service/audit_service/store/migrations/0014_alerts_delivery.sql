-- Alert delivery on NATS (issue 17): the reactor publishes every stored alert, reading the alerts of every tenant
-- after its delivery checkpoint (reactor_checkpoints 'alerts-nats', an alerts.seq) in seq order. This index
-- makes that read, polled while idle, a short index scan instead of a scan of the whole table.
CREATE UNIQUE INDEX alerts_by_seq ON alerts (seq);
