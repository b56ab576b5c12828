-- A claim walks only what it may take. The due deliveries of endpoints without ordering are
-- indexed by when each may be claimed: its next attempt, or the end of its lease if later.
-- Deliveries a live lease holds (handed to a dispatcher, queued in its memory) sort after
-- now, so a claim no longer walks them, however many there are; one whose lease ran out is
-- found as before.
drop index deliveries_due_unordered;
create index deliveries_due_unordered
    on deliveries (max(next_attempt_at, coalesce(lease_until, 0)))
    where status = 'pending' and order_key is null;
-- The held deliveries of each ordering key: whether a key has one in flight is one look-up
-- instead of a walk through the key's backlog.
create index deliveries_order_leased on deliveries (order_key, lease_until)
    where status = 'pending' and order_key is not null and lease_until is not null;
