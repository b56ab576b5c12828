-- The due deliveries of endpoints without ordering, apart from the ordered ones: a claim
-- walks these in due order, and finds the ordered ones by their key, so that a backlog of
-- ordered deliveries waiting behind their predecessors is not walked on every claim.
create index deliveries_due_unordered on deliveries (next_attempt_at)
    where status = 'pending' and order_key is null;
