-- Every change of what a deal page shows (units, state, terms) notifies `deal_changed` with the
-- deal's id, delivered when the changing transaction commits; WatchDeal's listeners read the deal
-- again. A trigger, so no statement that changes a deal (reservations, releases, sweeps, the daily
-- reset, updates) can forget it.
create function notify_deal_changed() returns trigger
language plpgsql as $$
begin
    perform pg_notify('deal_changed', new.id::text);
    return null;
end
$$;

create trigger deals_notify_change
    after update on deals
    for each row
    when (old.available_units is distinct from new.available_units
          or old.state is distinct from new.state
          or old.total_units is distinct from new.total_units
          or old.currency_code is distinct from new.currency_code
          or old.final_price_micros is distinct from new.final_price_micros
          or old.actual_price_micros is distinct from new.actual_price_micros
          or old.product_name is distinct from new.product_name
          or old.start_time is distinct from new.start_time
          or old.expire_time is distinct from new.expire_time
          or old.max_units_per_customer is distinct from new.max_units_per_customer
          or old.approval_window_seconds is distinct from new.approval_window_seconds)
    execute function notify_deal_changed();
