-- The reservation protocol (docs/reservations.md): a hold is confirmed once its order is recorded,
-- and the expiry worker resolves holds left unresolved, and releases the units of rejected or
-- cancelled orders whose release did not complete.

alter table reservations drop constraint reservations_state_check;
alter table reservations add constraint reservations_state_check
    check (state in ('reserved', 'confirmed', 'released'));

-- Unresolved holds, oldest first, for the worker.
create index reservations_held_by_create_time on reservations (create_time) where state = 'reserved';

-- Set when a rejected or cancelled order's units are known to be back with the deal.
alter table orders add column units_released boolean not null default false;
-- Finished orders whose units may still be out, for the worker.
create index orders_awaiting_release on orders (update_time)
    where state in ('rejected', 'cancelled') and not units_released;
