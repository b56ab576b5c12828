-- The intents of an exchange account whose outcome is not known yet, read before each of its
-- orders: none is decided on a book an unsettled order may have moved.
create index orders_intents on orders (account_id, id) where status = 'intent';
