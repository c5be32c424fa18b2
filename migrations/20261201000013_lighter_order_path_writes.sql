-- Less database work per order on the hot path: a reservation is written twice for each order
-- (taken, then confirmed), and the order once.

-- Its only reader, the count behind the per-customer limit, reads customer_holdings now
-- (20261201000012_customer_holdings.sql).
drop index reservations_held_by_customer;

-- Reservations are inserted only by statements that read their deal under its row lock (taking
-- units, claiming an offer), and deals are never deleted, so the key checked nothing those
-- statements do not; its check, a query per inserted row, cost 12 µs a reservation in a hot-deal
-- run. invariant-check still looks for a reservation without its deal.
alter table reservations drop constraint reservations_deal_id_fkey;

-- order-service's insert of orders reads abandoned_orders in a statement that starts after it has
-- taken the holds' locks (services/order/store.rs, insert_orders) instead of calling this per row.
drop function order_abandoned(uuid);
