-- busline-outbox: the outbox and inbox tables (default names).

-- One row per event written in a business transaction and not yet
-- confirmed by the broker. The envelope is stored as the bus encoded it:
-- CloudEvents headers (`ce-` names, as JSON [name, value] pairs) and the
-- payload bytes.
CREATE TABLE IF NOT EXISTS busline_outbox (
    seq          bigserial   PRIMARY KEY,
    topic        text        NOT NULL,
    event_id     text        NOT NULL,
    -- The event's key: rows of one key are published one at a time, in
    -- `seq` order. NULL: no order.
    ordering_key text,
    headers      jsonb       NOT NULL,
    body         bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    attempts     integer     NOT NULL DEFAULT 0,
    -- The relay that claimed the row, and until when; a failed publish
    -- leaves the token empty and the time at the next try.
    lease_token  bigint,
    lease_until  timestamptz,
    last_error   text
);

CREATE INDEX IF NOT EXISTS busline_outbox_key_seq ON busline_outbox (ordering_key, seq);

-- One row per (group, event id) a handler has applied.
CREATE TABLE IF NOT EXISTS busline_inbox (
    group_name text        NOT NULL,
    event_id   text        NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, event_id)
);
