-- The dedupe index is kept in memory and rebuilt from the events table, which holds each
-- event's source and dedupe key: a b-tree keyed by random dedupe keys dirtied a page of its own
-- for every stored event.
drop table dedupe;
