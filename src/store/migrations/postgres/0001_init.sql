-- tradehook schema on PostgreSQL: the same tables as on SQLite (its migrations 1 to 5 in one).
-- Times are unix milliseconds (bigint); ids are prefixed ULIDs compared bytewise (collate "C"),
-- so ordering by id orders by creation time whatever the database's locale.

create table api_tokens (
    id          text collate "C" primary key,
    name        text not null,
    token_hash  text not null unique,
    scope       text not null,
    created_at  bigint not null
);

create table endpoints (
    id                    text collate "C" primary key,
    url                   text not null,
    description           text not null default '',
    event_types           text not null,
    headers               text not null,
    signing               text not null,
    secret                text not null,
    enabled               bigint not null,
    disabled_reason       text,
    retry_schedule        text not null,
    timeout_ms            bigint not null,
    deleted               bigint not null default 0,
    created_at            bigint not null,
    updated_at            bigint not null,
    render                text not null default '{}',
    policy                text not null default '{}',
    failure_streak        bigint not null default 0,
    failing_since         bigint,
    previous_secret       text,
    previous_secret_until bigint
);

create table sources (
    id          text collate "C" primary key,
    name        text not null unique,
    spec        text not null,
    secret      text,
    created_at  bigint not null,
    updated_at  bigint not null
);

create table events (
    id          text collate "C" primary key,
    source      text collate "C" not null,
    type        text not null,
    dedupe_key  text not null,
    body        text not null,
    raw         bytea not null,
    created_at  bigint not null
);

create table dedupe (
    scope       text collate "C" not null,
    key         text collate "C" not null,
    event_id    text collate "C" not null,
    created_at  bigint not null,
    primary key (scope, key)
);

create table deliveries (
    id                text collate "C" primary key,
    event_id          text collate "C" not null,
    endpoint_id       text collate "C" not null,
    status            text not null,
    tries             bigint not null default 0,
    attempts          bigint not null default 0,
    next_attempt_at   bigint not null,
    lease_owner       text,
    lease_until       bigint,
    last_status_code  bigint,
    last_error        text,
    created_at        bigint not null,
    updated_at        bigint not null,
    order_key         text collate "C"
);
create index deliveries_due on deliveries (next_attempt_at) where status = 'pending';
create index deliveries_by_event on deliveries (event_id);
create index deliveries_by_endpoint on deliveries (endpoint_id, id);
create index deliveries_order on deliveries (order_key, id)
    where status = 'pending' and order_key is not null;

create table attempts (
    delivery_id    text collate "C" not null,
    id             text collate "C" not null,
    attempted_at   bigint not null,
    status_code    bigint,
    duration_ms    bigint not null,
    error_kind     text,
    error          text,
    response_body  text not null,
    primary key (delivery_id, id)
);
