-- The per-customer limit of a deal (null: none), and whom each reservation is for, so deal-service
-- can count a customer's units of a deal under the deal's row lock, in the transaction that takes
-- more. Reservations made before this migration have no customer; they count against no one.
alter table deals
    add column max_units_per_customer integer
        check (max_units_per_customer between 1 and 1000000);

alter table reservations
    add column customer_id text
        check (customer_id is null or char_length(customer_id) between 1 and 128);

-- The units a customer holds of a deal: held and confirmed reservations only.
create index reservations_held_by_customer
    on reservations (deal_id, customer_id)
    where state in ('reserved', 'confirmed') and customer_id is not null;
