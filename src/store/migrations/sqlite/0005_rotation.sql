-- Secret rotation: the previous secret still signs until the overlap ends (sealed like secret).
alter table endpoints add column previous_secret text;
alter table endpoints add column previous_secret_until integer;
