-- Claiming due work reads only what can be claimed: deliveries nobody holds (given back, or
-- waiting for a retry), deliveries whose lease has ended, and deliveries of nodes that went
-- silent. Deliveries a live node holds, however many (a copy-trading fan-out holds 100,000),
-- are no longer walked on every claim.
create index deliveries_unleased on deliveries (next_attempt_at)
    where status = 'pending' and lease_owner is null;
create index deliveries_leased on deliveries (lease_until)
    where status = 'pending' and lease_owner is not null;
create index deliveries_owner on deliveries (lease_owner)
    where status = 'pending' and lease_owner is not null;
