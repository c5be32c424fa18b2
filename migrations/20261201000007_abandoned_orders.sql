-- Order attempts given up after their units may have been held: the caller's deadline passed, it
-- went away, or the order could not be recorded. A row here means no order will ever be recorded
-- under that id (the order insert checks for it under the hold's advisory lock), so the hold is
-- released at once instead of by the worker 30 s later. See docs/reservations.md.
create table abandoned_orders (
    id           uuid primary key,
    abandon_time timestamptz not null default now()
);

-- The worker forgets tombstones long after their holds were settled.
create index abandoned_orders_by_time on abandoned_orders (abandon_time);

-- Whether attempt `id` was abandoned, read with a snapshot of its own: a volatile function's
-- queries see what committed before they ran, not only what committed before the calling
-- statement began. The order insert calls it after taking the hold's lock in the same statement,
-- so it sees an abandonment that committed while the insert waited for that lock.
create function order_abandoned(id uuid) returns boolean
language plpgsql volatile
as $$
begin
    return exists (select from abandoned_orders where abandoned_orders.id = order_abandoned.id);
end
$$;
