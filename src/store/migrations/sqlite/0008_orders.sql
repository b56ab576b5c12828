-- The order journal: every order an order destination decided on, written as an intent
-- before it is executed, with what came of it. `client_order_id` is derived from the
-- delivery and the leg, so a retried delivery finds its order instead of placing another.
create table orders (
    id               text primary key,
    client_order_id  text not null unique,
    account_id       text not null,
    endpoint_id      text not null,
    delivery_id      text not null,
    event_id         text not null,
    request          text,
    status           text not null,
    fill             text,
    reason           text,
    created_at       integer not null,
    updated_at       integer not null
);
create index orders_by_account on orders (account_id, id);

-- The paper exchange's book of each account that has traded (json), written in the same
-- transaction as the outcome of the order that changed it. `revision` counts the writes: a
-- book computed from an older revision is not written (another node got there first).
create table paper_books (
    account_id  text primary key,
    book        text not null,
    revision    bigint not null,
    updated_at  integer not null
);
