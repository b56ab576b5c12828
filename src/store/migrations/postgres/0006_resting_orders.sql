-- The resting orders of an account, read on every price it is sent.
create index orders_resting on orders (account_id, id) where status = 'resting';
