-- Ordered delivery: deliveries with the same key go out one after another, in id order.
alter table deliveries add column order_key text;
create index deliveries_order on deliveries (order_key, id)
    where status = 'pending' and order_key is not null;
-- Auto-disable: consecutive failed attempts of an endpoint, and since when.
alter table endpoints add column failure_streak integer not null default 0;
alter table endpoints add column failing_since integer;
