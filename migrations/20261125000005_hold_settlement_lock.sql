-- The advisory lock that order-service's order insert and the expiry worker's settling of a hold
-- both take, keyed by the order id (which is also the reservation id): with it, the worker never
-- releases a hold whose order is being committed, however long the commit takes.
create function hold_lock_key(id uuid) returns bigint
language sql immutable parallel safe
return hashtextextended(id::text, 20261125);
