-- A claim reads an ordering key's backlog no more: the first pending delivery of each key is
-- found by skipping through `deliveries_order`, so the unleased work read in due order is
-- that of endpoints without ordering alone; and whether a key has a delivery in flight is one
-- look-up in the held deliveries of that key, not a walk through its backlog.
drop index deliveries_unleased;
create index deliveries_unleased on deliveries (next_attempt_at)
    where status = 'pending' and lease_owner is null and order_key is null;
create index deliveries_order_leased on deliveries (order_key, lease_until)
    where status = 'pending' and order_key is not null and lease_owner is not null;
