-- The approval window of a deal (null: orders wait for an admin indefinitely) and the deadline it
-- gives each order, stamped when the order is recorded. A pending order past its deadline reads as
-- expired at once; the worker then marks it and gives its units back in one statement.
alter table deals
    add column approval_window_seconds integer
        check (approval_window_seconds between 60 and 43200);

alter table orders add column approve_deadline timestamptz;

alter table orders drop constraint orders_state_check;
alter table orders add constraint orders_state_check
    check (state in ('pending_approval', 'approved', 'rejected', 'cancelled', 'expired'));

-- The worker's due pending orders, soonest deadline first.
create index orders_awaiting_approval on orders (approve_deadline)
    where state = 'pending_approval' and approve_deadline is not null;
