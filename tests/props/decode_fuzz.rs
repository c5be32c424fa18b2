//! A bounded fuzzer of what the services decode: arbitrary bytes, protobuf-shaped bytes, mutations
//! of valid encodings and well-formed requests with hostile values in every field, decoded as every
//! request of both services (and as the reservation order-service decodes from deal-service), then
//! run through every validation that needs no database. Nothing may panic, whatever decodes must
//! re-encode to the same message, and whatever validates must convert back exactly.
//!
//! Why proptest and not cargo-fuzz: cargo-fuzz (libFuzzer) needs a nightly toolchain, and this
//! project builds with stable Rust only; as property tests these run in every ordinary
//! `scripts/test` run, on stable, with a fixed case budget, in a few seconds. They are not
//! coverage-guided, so rather than relying on random bytes to get past the decoder they also build
//! protobuf-shaped input, mutate valid encodings and fill real requests with hostile values.

use std::sync::LazyLock;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use proptest::{prelude::*, sample::Index, strategy::ValueTree, test_runner::TestRunner};
use prost::Message;
use prost_types::{FieldMask, Timestamp};
use uuid::Uuid;

use topkart::{
    deal::{
        self,
        domain::{Deal, DealState, DealTerms, ReservationState},
    },
    order::{self, domain::OrderState},
    proto::{Money, deal as dealpb, holds as holdspb, order as orderpb},
    shared::{
        money::Price,
        names,
        paging::{self, Cursor},
        status::Violations,
        time,
    },
};

const CASES: u32 = 2_048;

fn config() -> ProptestConfig {
    ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() }
}

/// The instants validation runs at: mid-day and a breath before the daily reset.
fn nows() -> [DateTime<Utc>; 2] {
    [
        Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2026, 11, 25, 23, 59, 59).unwrap() + TimeDelta::microseconds(999_999),
    ]
}

// ---------------------------------------------------------------------------------------------
// What runs on every input
// ---------------------------------------------------------------------------------------------

/// Decodes `bytes` as every message the services decode and validates whatever decodes.
fn exercise(bytes: &[u8]) {
    if let Some(request) = decoded::<dealpb::CreateDealRequest>(bytes) {
        create_deal(&request);
    }
    if let Some(request) = decoded::<dealpb::UpdateDealRequest>(bytes) {
        update_deal(&request);
    }
    if let Some(request) = decoded::<dealpb::GetDealRequest>(bytes) {
        strings(&request.name);
    }
    if let Some(request) = decoded::<dealpb::ListDealsRequest>(bytes) {
        list_deals(&request);
    }
    if let Some(request) = decoded::<holdspb::ReserveUnitsRequest>(bytes) {
        reserve_units(&request);
    }
    if let Some(request) = decoded::<holdspb::ReleaseUnitsRequest>(bytes) {
        strings(&request.reservation_id);
    }
    if let Some(request) = decoded::<holdspb::ConfirmUnitsRequest>(bytes) {
        strings(&request.reservation_id);
    }
    if let Some(reservation) = decoded::<holdspb::Reservation>(bytes) {
        reservation_reply(&reservation);
    }
    if let Some(request) = decoded::<orderpb::CreateOrderRequest>(bytes) {
        create_order(&request);
    }
    if let Some(request) = decoded::<orderpb::ListOrdersRequest>(bytes) {
        list_orders(&request);
    }
    for name in [
        decoded::<orderpb::GetOrderRequest>(bytes).map(|request| request.name),
        decoded::<orderpb::ApproveOrderRequest>(bytes).map(|request| request.name),
        decoded::<orderpb::RejectOrderRequest>(bytes).map(|request| request.name),
        decoded::<orderpb::CancelOrderRequest>(bytes).map(|request| request.name),
    ]
    .into_iter()
    .flatten()
    {
        strings(&name);
    }
}

/// `bytes` as an `M`, if they are one; a decoded message must survive re-encoding unchanged.
fn decoded<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<M> {
    let message = M::decode(bytes).ok()?;
    let again = M::decode(message.encode_to_vec().as_slice()).expect("a re-encoded message decodes");
    assert_eq!(again, message, "re-encoding changed the message");
    Some(message)
}

/// Every string validator, whatever field the string came from.
fn strings(value: &str) {
    let mut violations = Violations::default();
    for collection in [names::DEALS, names::ORDERS] {
        if let Some(id) = names::parse("name", collection, value, &mut violations) {
            assert!(Uuid::try_parse(&value[collection.len()..]).is_ok_and(|parsed| parsed == id));
        }
    }
    names::parse_uuid("id", value, &mut violations);
    topkart::shared::customers::customer_id("customer_id", value, &mut violations);
    for filter in ["live", "expired", "any|alice", ""] {
        cursor(value, filter);
    }
}

/// Reads `token` for `filter`; a token read back must come out of its own re-encoding the same.
fn cursor(token: &str, filter: &str) {
    let mut violations = Violations::default();
    match Cursor::from_token("page_token", token, filter, &mut violations) {
        Some(cursor) => {
            let mut again = Violations::default();
            assert_eq!(Cursor::from_token("page_token", &cursor.to_token(filter), filter, &mut again), Some(cursor));
            assert!(violations.is_empty() && again.is_empty());
        }
        None => assert_eq!(violations.is_empty(), token.is_empty(), "{token:?}"),
    }
}

fn price(field: &str, money: Option<&Money>) -> Option<Price> {
    let mut violations = Violations::default();
    let price = Price::parse(field, money, &mut violations);
    assert_eq!(price.is_some(), violations.is_empty());
    if let Some(price) = &price {
        let money = price.to_proto();
        assert_eq!(Price::parse(field, Some(&money), &mut violations).as_ref(), Some(price));
        for quantity in [1, 100, i32::MAX, i32::MIN, -1] {
            let _ = price.times(quantity);
        }
        let _ = price.to_string();
    }
    price
}

fn timestamp(field: &str, timestamp: Option<&Timestamp>) -> Option<DateTime<Utc>> {
    let mut violations = Violations::default();
    let instant = time::parse(field, timestamp?, &mut violations);
    assert_eq!(instant.is_some(), violations.is_empty());
    if let Some(instant) = instant {
        assert_eq!(time::parse(field, &time::to_proto(instant), &mut violations), Some(instant));
        let _ = deal::domain::daily_reset_after(instant);
    }
    instant
}

/// A stored deal at `now` in `state`.
fn stored(now: DateTime<Utc>, state: DealState) -> Deal {
    let start = match state {
        DealState::Scheduled => now + TimeDelta::hours(1),
        DealState::Active | DealState::Expired => now - TimeDelta::minutes(30),
    };
    let terms = DealTerms {
        product_name: "Phone".into(),
        actual_price: Price::from_stored("INR".into(), 1_000_000_000),
        final_price: Price::from_stored("INR".into(), 600_000_000),
        total_units: 10,
        start_time: start,
        expire_time: start + TimeDelta::hours(2),
        max_units_per_customer: Some(4),
        approval_window_seconds: Some(600),
        offer_window_seconds: 300,
    };
    Deal { id: Uuid::nil(), terms, available_units: 6, state, create_time: now, update_time: now }
}

fn deal_message(deal: &dealpb::Deal) {
    strings(&deal.name);
    strings(&deal.product_name);
    price("deal.actual_price", deal.actual_price.as_ref());
    price("deal.final_price", deal.final_price.as_ref());
    for instant in [&deal.start_time, &deal.expire_time, &deal.create_time, &deal.update_time] {
        timestamp("deal.start_time", instant.as_ref());
    }
    let _ = dealpb::deal::State::try_from(deal.state).map(deal::convert::deal_state_from_proto);
}

fn create_deal(request: &dealpb::CreateDealRequest) {
    if let Some(deal) = &request.deal {
        deal_message(deal);
    }
    for now in nows() {
        let Ok(terms) = deal::domain::new_deal(request.deal.as_ref(), now) else { continue };
        let state = deal::domain::initial_state(&terms, now);
        let deal = Deal {
            id: Uuid::nil(),
            available_units: terms.total_units,
            terms,
            state,
            create_time: now,
            update_time: now,
        };
        let reply = deal::convert::deal_to_proto(&deal);
        assert_eq!(dealpb::Deal::decode(reply.encode_to_vec().as_slice()).unwrap(), reply);
        for quantity in [1, 100, i32::MAX] {
            let _ = deal::domain::refusal(&deal, quantity, Some(&deal.terms.final_price));
        }
    }
}

fn update_deal(request: &dealpb::UpdateDealRequest) {
    let patch = request.deal.clone().unwrap_or_default();
    deal_message(&patch);
    let mut violations = Violations::default();
    names::parse("deal.name", names::DEALS, &patch.name, &mut violations);
    let mask = request.update_mask.clone().map(|mask: FieldMask| mask.paths).unwrap_or_default();
    for path in &mask {
        strings(path);
    }
    for now in nows() {
        for state in [DealState::Scheduled, DealState::Active, DealState::Expired] {
            let current = stored(now, state);
            if let Ok(terms) = deal::domain::update_deal(&current, &patch, &mask, now) {
                assert!(terms.total_units >= current.reserved_units());
                assert!(terms.expire_time > now && terms.expire_time > terms.start_time);
            }
        }
    }
}

fn list_deals(request: &dealpb::ListDealsRequest) {
    let mut violations = Violations::default();
    let size = paging::page_size("page_size", request.page_size, &mut violations);
    assert!((1..=paging::MAX_PAGE_SIZE).contains(&size));
    if let Ok(state) = dealpb::deal::State::try_from(request.state) {
        let filter = deal::convert::deal_state_from_proto(state).map_or("live", DealState::as_str);
        cursor(&request.page_token, filter);
    }
    strings(&request.page_token);
}

fn reserve_units(request: &holdspb::ReserveUnitsRequest) {
    let mut violations = Violations::default();
    let deal_id = names::parse("deal", names::DEALS, &request.deal, &mut violations);
    let id = names::parse_uuid("reservation_id", &request.reservation_id, &mut violations);
    let quantity = topkart::shared::quantity::quantity("quantity", request.quantity, &mut violations);
    let expected = request.expected_unit_price.as_ref().and_then(|money| price("expected_unit_price", Some(money)));
    if let (Some(_), Some(_), Some(quantity)) = (deal_id, id, quantity) {
        assert!((1..=topkart::shared::quantity::MAX_QUANTITY).contains(&quantity));
        for now in nows() {
            for state in [DealState::Scheduled, DealState::Active, DealState::Expired] {
                let _ = deal::domain::refusal(&stored(now, state), quantity, expected.as_ref());
            }
        }
    }
}

/// What order-service does with deal-service's answer to a reservation.
fn reservation_reply(reservation: &holdspb::Reservation) {
    strings(&reservation.reservation_id);
    strings(&reservation.deal);
    price("unit_price", reservation.unit_price.as_ref());
    timestamp("create_time", reservation.create_time.as_ref());
    timestamp("update_time", reservation.update_time.as_ref());
    if let Ok(state) = holdspb::reservation::State::try_from(reservation.state) {
        let _ = state.as_str_name();
    }
    for name in ["reserved", "released", "confirmed"] {
        let _ = ReservationState::from_db(name).map(deal::convert::reservation_state_to_proto);
    }
}

fn create_order(request: &orderpb::CreateOrderRequest) {
    if let Some(order) = &request.order {
        strings(&order.deal);
        strings(&order.customer_id);
        price("order.unit_price", order.unit_price.as_ref());
    }
    strings(&request.request_id);
    for buyer in [None, Some("alice"), Some("")] {
        let Ok(new) = order::domain::new_order(request, buyer) else { continue };
        assert!((1..=100).contains(&new.quantity));
        let unit_price = new.shown_unit_price.clone().unwrap_or_else(|| Price::from_stored("INR".into(), 1));
        let total_price = unit_price.times(new.quantity).expect("at most 100 units of at most 1e9 fit");
        let placed = order::domain::Order {
            id: new.request_id.unwrap_or_default(),
            deal_id: new.deal_id,
            customer_id: new.customer_id.clone(),
            quantity: new.quantity,
            unit_price,
            total_price,
            state: OrderState::PendingApproval,
            create_time: nows()[0],
            update_time: nows()[0],
            approve_deadline: Some(nows()[0]),
        };
        assert!(new.placed(&placed));
        let reply = order::convert::order_to_proto(&placed);
        assert_eq!(orderpb::Order::decode(reply.encode_to_vec().as_slice()).unwrap(), reply);
    }
}

fn list_orders(request: &orderpb::ListOrdersRequest) {
    let mut violations = Violations::default();
    paging::page_size("page_size", request.page_size, &mut violations);
    let customer = topkart::shared::customers::customer_id("customer_id", &request.customer_id, &mut violations);
    if let Ok(state) = orderpb::order::State::try_from(request.state) {
        let state = order::convert::order_state_from_proto(state);
        let filter = format!("{}|{}", state.map_or("any", OrderState::as_str), customer.as_deref().unwrap_or(""));
        cursor(&request.page_token, &filter);
    }
    strings(&request.page_token);
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// Valid encodings of every kind of request, to mutate.
fn seeds() -> Vec<Vec<u8>> {
    let now = nows()[0];
    let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    let deal_name = names::format(names::DEALS, id);
    let inr = |units| Money { currency_code: "INR".into(), units, nanos: 500_000_000 };
    let deal = dealpb::Deal {
        name: deal_name.clone(),
        product_name: "Noise-cancelling headphones".into(),
        actual_price: Some(inr(9_999)),
        final_price: Some(inr(4_999)),
        total_units: 50,
        start_time: Some(time::to_proto(now + TimeDelta::hours(1))),
        expire_time: Some(time::to_proto(now + TimeDelta::hours(3))),
        ..Default::default()
    };
    let token = Cursor { at: now, id }.to_token("live");
    let order =
        orderpb::Order { deal: deal_name.clone(), quantity: 2, unit_price: Some(inr(4_999)), ..Default::default() };
    vec![
        dealpb::CreateDealRequest { deal: Some(deal.clone()) }.encode_to_vec(),
        dealpb::UpdateDealRequest {
            deal: Some(deal.clone()),
            update_mask: Some(FieldMask {
                paths: vec!["product_name".into(), "total_units".into(), "expire_time".into()],
            }),
        }
        .encode_to_vec(),
        dealpb::GetDealRequest { name: deal_name.clone() }.encode_to_vec(),
        dealpb::ListDealsRequest { page_size: 20, page_token: token, state: 0 }.encode_to_vec(),
        holdspb::ReserveUnitsRequest {
            deal: deal_name.clone(),
            reservation_id: id.to_string(),
            quantity: 2,
            expected_unit_price: Some(inr(4_999)),
            customer_id: "alice".into(),
            waitlist_entry: String::new(),
            timeout: Some(prost_types::Duration { seconds: 1, nanos: 500_000_000 }),
        }
        .encode_to_vec(),
        holdspb::ReleaseUnitsRequest { reservation_id: id.to_string() }.encode_to_vec(),
        holdspb::Reservation {
            reservation_id: id.to_string(),
            deal: deal_name.clone(),
            quantity: 2,
            unit_price: Some(inr(4_999)),
            state: 1,
            create_time: Some(time::to_proto(now)),
            update_time: Some(time::to_proto(now)),
            approval_window: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
        }
        .encode_to_vec(),
        orderpb::CreateOrderRequest { order: Some(order), request_id: id.to_string(), waitlist_entry: String::new() }
            .encode_to_vec(),
        orderpb::ListOrdersRequest {
            page_size: 5,
            page_token: Cursor { at: now, id }.to_token("pending_approval|alice"),
            customer_id: "alice".into(),
            state: 1,
        }
        .encode_to_vec(),
        orderpb::GetOrderRequest { name: names::format(names::ORDERS, id) }.encode_to_vec(),
        dealpb::JoinWaitlistRequest { deal: deal_name.clone(), quantity: 2, request_id: id.to_string() }
            .encode_to_vec(),
        dealpb::ListWaitlistEntriesRequest { parent: deal_name, page_size: 5, page_token: String::new() }
            .encode_to_vec(),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    Truncate(Index),
    /// Appends a copy of a slice: a field sent twice.
    Repeat(Index, usize),
    /// Appends another seed: every field of another message.
    Splice(Index),
}

fn mutation() -> BoxedStrategy<Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        3 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::SetByte(at, byte)),
        2 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..12))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        2 => (any::<Index>(), 1usize..8).prop_map(|(at, len)| Mutation::Remove(at, len)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), 1usize..40).prop_map(|(at, len)| Mutation::Repeat(at, len)),
        1 => any::<Index>().prop_map(Mutation::Splice),
    ]
    .boxed()
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation], seeds: &[Vec<u8>]) -> Vec<u8> {
    for mutation in mutations {
        let len = bytes.len();
        let at = |index: &Index| if len == 0 { 0 } else { index.index(len) };
        match mutation {
            Mutation::FlipBit(index, bit) if len > 0 => bytes[at(index)] ^= 1 << bit,
            Mutation::SetByte(index, byte) if len > 0 => bytes[at(index)] = *byte,
            Mutation::Insert(index, inserted) => {
                let at = at(index);
                bytes.splice(at..at, inserted.iter().copied());
            }
            Mutation::Remove(index, count) if len > 0 => {
                let at = at(index);
                bytes.drain(at..(at + count).min(len));
            }
            Mutation::Truncate(index) => bytes.truncate(at(index)),
            Mutation::Repeat(index, count) if len > 0 => {
                let at = at(index);
                let copy = bytes[at..(at + count).min(len)].to_vec();
                bytes.extend(copy);
            }
            Mutation::Splice(index) => bytes.extend_from_slice(&seeds[index.index(seeds.len())]),
            _ => {}
        }
    }
    bytes
}

/// A protobuf field with any number and wire type, possibly a nested message of such fields.
#[derive(Debug, Clone)]
enum Field {
    Varint(u32, u64),
    Fixed64(u32, u64),
    Fixed32(u32, u32),
    Bytes(u32, Vec<u8>),
    Message(u32, Vec<Field>),
    /// A key alone, with any wire type (including groups and the invalid 6 and 7).
    Key(u32, u8),
}

fn field_number() -> BoxedStrategy<u32> {
    prop_oneof![12 => 1u32..=11, 1 => Just(0u32), 1 => Just((1 << 29) - 1), 1 => any::<u32>()].boxed()
}

fn varint_value() -> BoxedStrategy<u64> {
    prop_oneof![
        3 => prop::sample::select(vec![
            0,
            1,
            2,
            42,
            100,
            101,
            1_000_000,
            1_000_001,
            999_999_000,
            999_999_999,
            1_000_000_000,
            1_000_000_001,
            i32::MAX as u64,
            i32::MIN as i64 as u64,
            -1i64 as u64,
            i64::MAX as u64,
            i64::MIN as u64,
            u64::MAX,
            1_764_064_800,
            253_402_300_800,
        ]),
        1 => any::<u64>(),
    ]
    .boxed()
}

fn text() -> BoxedStrategy<Vec<u8>> {
    let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    let now = nows()[0];
    let fixed: Vec<String> = vec![
        "INR".into(),
        "inr".into(),
        "USD".into(),
        String::new(),
        names::format(names::DEALS, id),
        names::format(names::ORDERS, id),
        id.to_string(),
        "*".into(),
        "product_name".into(),
        "total_units".into(),
        "start_time".into(),
        "expire_time".into(),
        "actual_price".into(),
        "final_price".into(),
        "available_units".into(),
        "alice".into(),
        "\0".into(),
        " \t\n".into(),
        "é😀\u{85}\u{202e}".into(),
        "x".repeat(201),
        Cursor { at: now, id }.to_token("live"),
        Cursor { at: now, id }.to_token("any|alice"),
        Cursor { at: now, id }.to_token("expired"),
    ];
    // Page tokens of any content: the hex of `v1|{micros}|{id}|{filter}` with hostile parts.
    let forged = (
        prop_oneof![any::<i64>().prop_map(|micros| micros.to_string()), Just("-0".to_owned()), Just("1e9".to_owned())],
        prop_oneof![Just(id.to_string()), Just(id.simple().to_string()), Just(String::new())],
        prop::sample::select(vec!["live", "expired", "any|alice", "any|", "", "live|x"]),
    )
        .prop_map(|(micros, id, filter)| {
            format!("v1|{micros}|{id}|{filter}").bytes().map(|byte| format!("{byte:02x}")).collect::<String>()
        });
    prop_oneof![
        4 => prop::sample::select(fixed).prop_map(String::into_bytes),
        2 => forged.prop_map(String::into_bytes),
        2 => prop::collection::vec(any::<char>(), 0..24).prop_map(|chars| String::from_iter(chars).into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..24),
    ]
    .boxed()
}

fn fields() -> BoxedStrategy<Vec<Field>> {
    let leaf = prop_oneof![
        4 => (field_number(), varint_value()).prop_map(|(number, value)| Field::Varint(number, value)),
        1 => (field_number(), any::<u64>()).prop_map(|(number, value)| Field::Fixed64(number, value)),
        1 => (field_number(), any::<u32>()).prop_map(|(number, value)| Field::Fixed32(number, value)),
        4 => (field_number(), text()).prop_map(|(number, bytes)| Field::Bytes(number, bytes)),
        1 => (field_number(), 0u8..8).prop_map(|(number, wire)| Field::Key(number, wire)),
    ];
    let field = leaf.prop_recursive(3, 32, 4, |inner| {
        (field_number(), prop::collection::vec(inner, 0..4)).prop_map(|(number, fields)| Field::Message(number, fields))
    });
    prop::collection::vec(field, 0..5).boxed()
}

fn encode(fields: &[Field], out: &mut Vec<u8>) {
    let key = |number: u32, wire: u8, out: &mut Vec<u8>| {
        prost::encoding::encode_varint((u64::from(number) << 3) | u64::from(wire), out);
    };
    for field in fields {
        match field {
            Field::Varint(number, value) => {
                key(*number, 0, out);
                prost::encoding::encode_varint(*value, out);
            }
            Field::Fixed64(number, value) => {
                key(*number, 1, out);
                out.extend_from_slice(&value.to_le_bytes());
            }
            Field::Fixed32(number, value) => {
                key(*number, 5, out);
                out.extend_from_slice(&value.to_le_bytes());
            }
            Field::Bytes(number, bytes) => {
                key(*number, 2, out);
                prost::encoding::encode_varint(bytes.len() as u64, out);
                out.extend_from_slice(bytes);
            }
            Field::Message(number, fields) => {
                let mut inner = Vec::new();
                encode(fields, &mut inner);
                key(*number, 2, out);
                prost::encoding::encode_varint(inner.len() as u64, out);
                out.extend_from_slice(&inner);
            }
            Field::Key(number, wire) => key(*number, *wire, out),
        }
    }
}

fn protobuf_shaped() -> BoxedStrategy<Vec<u8>> {
    fields()
        .prop_map(|fields| {
            let mut bytes = Vec::new();
            encode(&fields, &mut bytes);
            bytes
        })
        .boxed()
}

fn mutated_seed() -> BoxedStrategy<Vec<u8>> {
    static SEEDS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(seeds);
    (any::<Index>(), prop::collection::vec(mutation(), 1..4))
        .prop_map(|(seed, mutations)| mutate(SEEDS[seed.index(SEEDS.len())].clone(), &mutations, &SEEDS))
        .boxed()
}

fn hostile_string() -> BoxedStrategy<String> {
    text().prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).boxed()
}

/// Any 32-bit value, mostly the interesting ones (as varints truncate them).
fn hostile_i32() -> BoxedStrategy<i32> {
    varint_value().prop_map(|value| value as i32).boxed()
}

fn hostile_i64() -> BoxedStrategy<i64> {
    varint_value().prop_map(|value| value as i64).boxed()
}

fn hostile_money() -> BoxedStrategy<Option<Money>> {
    prop::option::of((hostile_string(), hostile_i64(), hostile_i32()).prop_map(|(currency_code, units, nanos)| Money {
        currency_code,
        units,
        nanos,
    }))
    .boxed()
}

fn hostile_timestamp() -> BoxedStrategy<Option<Timestamp>> {
    let now = nows()[0].timestamp();
    let seconds = prop_oneof![hostile_i64(), (-100_000i64..100_000).prop_map(move |offset| now + offset)];
    prop::option::of((seconds, hostile_i32()).prop_map(|(seconds, nanos)| Timestamp { seconds, nanos })).boxed()
}

fn hostile_deal() -> BoxedStrategy<dealpb::Deal> {
    (
        hostile_string(),
        hostile_string(),
        hostile_money(),
        hostile_money(),
        hostile_i32(),
        hostile_timestamp(),
        hostile_timestamp(),
        hostile_i32(),
    )
        .prop_map(|(name, product_name, actual_price, final_price, total_units, start_time, expire_time, state)| {
            dealpb::Deal {
                name,
                product_name,
                actual_price,
                final_price,
                total_units,
                available_units: total_units,
                start_time,
                expire_time,
                state,
                ..Default::default()
            }
        })
        .boxed()
}

/// Every request type, well formed as protobuf, with hostile values in every field.
fn hostile_request() -> BoxedStrategy<Vec<u8>> {
    let order = (hostile_string(), hostile_string(), hostile_i32(), hostile_money()).prop_map(
        |(deal, customer_id, quantity, unit_price)| orderpb::Order {
            deal,
            customer_id,
            quantity,
            unit_price,
            ..Default::default()
        },
    );
    prop_oneof![
        hostile_deal().prop_map(|deal| dealpb::CreateDealRequest { deal: Some(deal) }.encode_to_vec()),
        (hostile_deal(), prop::collection::vec(hostile_string(), 0..4)).prop_map(|(deal, paths)| {
            dealpb::UpdateDealRequest { deal: Some(deal), update_mask: Some(FieldMask { paths }) }.encode_to_vec()
        }),
        hostile_string().prop_map(|name| dealpb::GetDealRequest { name }.encode_to_vec()),
        (hostile_i32(), hostile_string(), hostile_i32()).prop_map(|(page_size, page_token, state)| {
            dealpb::ListDealsRequest { page_size, page_token, state }.encode_to_vec()
        }),
        (hostile_string(), hostile_string(), hostile_i32(), hostile_money(), hostile_string(), hostile_string())
            .prop_map(|(deal, reservation_id, quantity, expected_unit_price, customer_id, waitlist_entry)| {
                holdspb::ReserveUnitsRequest {
                    deal,
                    reservation_id,
                    quantity,
                    expected_unit_price,
                    customer_id,
                    waitlist_entry,
                    timeout: None,
                }
                .encode_to_vec()
            }),
        (hostile_string(), hostile_i32(), hostile_string()).prop_map(|(deal, quantity, request_id)| {
            dealpb::JoinWaitlistRequest { deal, quantity, request_id }.encode_to_vec()
        }),
        hostile_string().prop_map(|reservation_id| holdspb::ReleaseUnitsRequest { reservation_id }.encode_to_vec()),
        (hostile_string(), hostile_i32(), hostile_money(), hostile_i32(), hostile_timestamp()).prop_map(
            |(deal, quantity, unit_price, state, create_time)| {
                holdspb::Reservation {
                    reservation_id: deal.clone(),
                    deal,
                    quantity,
                    unit_price,
                    state,
                    create_time,
                    update_time: create_time,
                    approval_window: None,
                }
                .encode_to_vec()
            }
        ),
        (prop::option::of(order), hostile_string(), hostile_string()).prop_map(
            |(order, request_id, waitlist_entry)| {
                orderpb::CreateOrderRequest { order, request_id, waitlist_entry }.encode_to_vec()
            }
        ),
        (hostile_i32(), hostile_string(), hostile_string(), hostile_i32()).prop_map(
            |(page_size, page_token, customer_id, state)| {
                orderpb::ListOrdersRequest { page_size, page_token, customer_id, state }.encode_to_vec()
            }
        ),
        hostile_string().prop_map(|name| orderpb::GetOrderRequest { name }.encode_to_vec()),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        exercise(&bytes);
    }

    #[test]
    fn protobuf_shaped_bytes_never_panic(bytes in protobuf_shaped()) {
        exercise(&bytes);
    }

    #[test]
    fn mutated_requests_never_panic(bytes in mutated_seed()) {
        exercise(&bytes);
    }

    #[test]
    fn hostile_field_values_never_panic(bytes in hostile_request()) {
        exercise(&bytes);
    }

    #[test]
    fn hostile_strings_never_panic(value in hostile_string()) {
        strings(&value);
    }
}

#[test]
fn every_seed_decodes_and_validates() {
    for seed in seeds() {
        exercise(&seed);
    }
    let seeds = seeds();
    let create = dealpb::CreateDealRequest::decode(seeds[0].as_slice()).unwrap();
    assert!(deal::domain::new_deal(create.deal.as_ref(), nows()[0]).is_ok());
    let order = orderpb::CreateOrderRequest::decode(seeds[7].as_slice()).unwrap();
    assert!(order::domain::new_order(&order, Some("alice")).is_ok());
}

/// Whether `bytes` decode to a request with content of one of the kinds validation reads deeply.
fn reaches_validation(bytes: &[u8]) -> bool {
    fn filled<M: Message + Default + PartialEq>(bytes: &[u8]) -> bool {
        M::decode(bytes).is_ok_and(|message| message != M::default())
    }
    filled::<dealpb::CreateDealRequest>(bytes)
        || filled::<dealpb::UpdateDealRequest>(bytes)
        || filled::<holdspb::ReserveUnitsRequest>(bytes)
        || filled::<orderpb::CreateOrderRequest>(bytes)
}

/// The inputs must get past the decoder, and the mutations sometimes even past validation, or the
/// fuzzer only fuzzes prost. (The runner is deterministic, so these counts are fixed.)
#[test]
fn the_inputs_reach_the_validators() {
    let mut runner = TestRunner::deterministic();
    let (mut shaped, mut mutated, mut mutated_valid) = (0, 0, 0);
    for _ in 0..1_000 {
        if reaches_validation(&protobuf_shaped().new_tree(&mut runner).unwrap().current()) {
            shaped += 1;
        }
        let bytes = mutated_seed().new_tree(&mut runner).unwrap().current();
        if reaches_validation(&bytes) {
            mutated += 1;
        }
        let create = dealpb::CreateDealRequest::decode(bytes.as_slice());
        let order = orderpb::CreateOrderRequest::decode(bytes.as_slice());
        if create.is_ok_and(|request| deal::domain::new_deal(request.deal.as_ref(), nows()[0]).is_ok())
            || order.is_ok_and(|request| order::domain::new_order(&request, Some("alice")).is_ok())
        {
            mutated_valid += 1;
        }
    }
    assert!(shaped >= 75, "{shaped} of 1000 protobuf-shaped inputs reach validation");
    assert!(mutated >= 65, "{mutated} of 1000 mutated requests reach validation");
    assert!(mutated_valid >= 10, "{mutated_valid} of 1000 mutated requests pass validation");
}
