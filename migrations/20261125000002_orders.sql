-- Orders. Owned by order-service, which reaches deals only through deal-service's API: hence no
-- foreign key to `deals`.

create table orders (
    id                  uuid primary key,
    deal_id             uuid not null,
    customer_id         text not null check (char_length(customer_id) between 1 and 128),
    quantity            integer not null check (quantity > 0),
    currency_code       text not null,
    unit_price_micros   bigint not null check (unit_price_micros > 0),
    total_price_micros  bigint not null check (total_price_micros = unit_price_micros * quantity),
    state               text not null check (state in ('pending_approval', 'approved', 'rejected', 'cancelled')),
    create_time         timestamptz not null default now(),
    update_time         timestamptz not null default now()
);

-- ListOrders, newest first, for everyone and per customer.
create index orders_by_create_time on orders (create_time desc, id desc);
create index orders_by_customer on orders (customer_id, create_time desc, id desc);
