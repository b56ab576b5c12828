-- tradehook schema, version 1. Times are unix milliseconds; ids are prefixed ULIDs, so ordering
-- by id orders by creation time (cursor pagination and time filters rely on it).
--
-- The hot tables are `without rowid`, keyed by their id: a rowid table with a text primary key
-- is two b-trees, and every b-tree a commit touches costs whole pages in the WAL. Indexes are
-- only those a query needs.

create table api_tokens (
    id          text primary key,
    name        text not null,
    token_hash  text not null unique,
    scope       text not null,
    created_at  integer not null
);

create table endpoints (
    id              text primary key,
    url             text not null,
    description     text not null default '',
    event_types     text not null,          -- json array of patterns
    headers         text not null,          -- json object
    signing         text not null,
    secret          text not null,
    enabled         integer not null,
    disabled_reason text,
    retry_schedule  text not null,          -- json array of delays in ms
    timeout_ms      integer not null,
    deleted         integer not null default 0,
    created_at      integer not null,
    updated_at      integer not null
);

create table sources (
    id          text primary key,
    name        text not null unique,
    spec        text not null,              -- json: format, auth, ip_allowlist, dedupe_field
    secret      text,
    created_at  integer not null,
    updated_at  integer not null
);

create table events (
    id          text primary key,
    source      text not null,
    type        text not null,
    dedupe_key  text not null,
    body        text not null,              -- the canonical event, as delivered
    raw         blob not null,              -- the request body (secrets removed); empty when
                                            -- the body holds nothing more (publisher API)
    created_at  integer not null
) without rowid;
-- no index on created_at: time filters are ranges of the time-ordered id

-- one row per (source, key): the newest event seen with that key
create table dedupe (
    scope       text not null,
    key         text not null,
    event_id    text not null,
    created_at  integer not null,
    primary key (scope, key)
) without rowid;

create table deliveries (
    id                text primary key,
    event_id          text not null,
    endpoint_id       text not null,
    status            text not null,        -- pending | succeeded | failed | cancelled
    tries             integer not null default 0,  -- since creation or the last manual retry
    attempts          integer not null default 0,  -- in all
    next_attempt_at   integer not null,
    lease_owner       text,
    lease_until       integer,
    last_status_code  integer,
    last_error        text,
    created_at        integer not null,
    updated_at        integer not null
) without rowid;
-- the claim query walks pending rows by due time; finished rows stay out of this index
create index deliveries_due on deliveries (next_attempt_at) where status = 'pending';
create index deliveries_by_event on deliveries (event_id);
create index deliveries_by_endpoint on deliveries (endpoint_id, id);

create table attempts (
    delivery_id    text not null,
    id             text not null,
    attempted_at   integer not null,
    status_code    integer,
    duration_ms    integer not null,
    error_kind     text,
    error          text,
    response_body  text not null,
    primary key (delivery_id, id)
) without rowid;
