-- WatchDeal's notifications (20261201000010_deal_changes_notify.sql), once per statement instead of
-- once per row: the sweep and the daily reset change thousands of deals in one statement, and a
-- notification per row took 100 ms of a 400 ms sweep of 10,000 due deals. A statement that updates
-- at most 100 deals still names each one it changed; one that updates more sends a single `*`, on
-- which every listener reads all the deals it has watchers for, once (as after a lost connection).
drop trigger deals_notify_change on deals;
drop function notify_deal_changed();

create function notify_deals_changed() returns trigger
language plpgsql as $$
declare
    changed uuid[];
begin
    -- Statements of that many rows are sweeps and daily resets, which change states: not worth
    -- comparing row by row, and a needless `*` costs a read of the watched deals, nothing more.
    if (select count(*) from new_rows) > 100 then
        perform pg_notify('deal_changed', '*');
        return null;
    end if;
    select array_agg(n.id) into changed
      from new_rows n join old_rows o on o.id = n.id
     where o.available_units is distinct from n.available_units
        or o.state is distinct from n.state
        or o.total_units is distinct from n.total_units
        or o.currency_code is distinct from n.currency_code
        or o.final_price_micros is distinct from n.final_price_micros
        or o.actual_price_micros is distinct from n.actual_price_micros
        or o.product_name is distinct from n.product_name
        or o.start_time is distinct from n.start_time
        or o.expire_time is distinct from n.expire_time
        or o.max_units_per_customer is distinct from n.max_units_per_customer
        or o.approval_window_seconds is distinct from n.approval_window_seconds
        or o.offer_window_seconds is distinct from n.offer_window_seconds;
    perform pg_notify('deal_changed', id::text) from unnest(changed) as id;
    return null;
end
$$;

create trigger deals_notify_change
    after update on deals
    referencing old table as old_rows new table as new_rows
    for each statement
    execute function notify_deals_changed();
