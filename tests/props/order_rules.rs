//! Property tests of `new_order`: arbitrary `CreateOrder` requests (any request id, deal name,
//! customer id, quantity and price; with and without a token's buyer) against an independent
//! reading of the rules in README.md. What it accepts satisfies every rule; what it refuses is
//! INVALID_ARGUMENT naming exactly the bad fields.

use proptest::{prelude::*, strategy::ValueTree, test_runner::TestRunner};

use topkart::{
    order::domain::*,
    proto::{Money, order as pb},
    shared::{
        customers::MAX_CUSTOMER_ID_CHARS,
        money::{MAX_PRICE_UNITS, Price},
        names,
        status::Violations,
    },
};
use uuid::Uuid;

fn config() -> ProptestConfig {
    ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() }
}

/// The field a token's subject is reported under.
const BUYER_FIELD: &str = "authorization (the token's subject)";

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

fn arbitrary_string(max_chars: usize) -> BoxedStrategy<String> {
    prop::collection::vec(any::<char>(), 0..max_chars).prop_map(String::from_iter).boxed()
}

fn uuid_text() -> BoxedStrategy<String> {
    any::<u128>()
        .prop_flat_map(|bits| {
            let id = Uuid::from_u128(bits);
            prop::sample::select(vec![
                id.hyphenated().to_string(),
                id.simple().to_string(),
                id.urn().to_string(),
                id.braced().to_string(),
                id.hyphenated().to_string().to_uppercase(),
                format!(" {id}"),
                format!("{id}\n"),
                id.to_string()[..35].to_owned(),
                Uuid::nil().to_string(),
            ])
        })
        .boxed()
}

fn request_id() -> BoxedStrategy<String> {
    prop_oneof![
        4 => Just(String::new()),
        4 => any::<u128>().prop_map(|bits| Uuid::from_u128(bits).to_string()),
        2 => uuid_text(),
        1 => prop::sample::select(vec!["retry-1", "orders/1", "\0", " "]).prop_map(str::to_owned),
        1 => arbitrary_string(40),
    ]
    .boxed()
}

fn deal_name() -> BoxedStrategy<String> {
    prop_oneof![
        6 => any::<u128>().prop_map(|bits| names::format(names::DEALS, Uuid::from_u128(bits))),
        3 => (prop::sample::select(vec!["deals/", "orders/", "deal/", "DEALS/", "", "deals//"]), uuid_text())
            .prop_map(|(prefix, id)| format!("{prefix}{id}")),
        1 => prop::sample::select(vec!["", "deals/", "deals/not-a-uuid", "deals/42"]).prop_map(str::to_owned),
        1 => arbitrary_string(50),
    ]
    .boxed()
}

fn customer() -> BoxedStrategy<String> {
    let char = prop_oneof![
        10 => prop::char::range('a', 'z'),
        1 => prop::sample::select(vec!['\0', '\n', '\u{7f}', '\u{85}', ' ', 'é', '😀', '|']),
        1 => any::<char>(),
    ];
    // Around the limit of 128 characters, with multi-byte ones and no control characters.
    let long = prop_oneof![20 => prop::char::range('a', 'z'), 2 => Just('é'), 1 => Just('😀'), 1 => Just('|')];
    prop_oneof![
        6 => prop::collection::vec(char.clone(), 0..12).prop_map(String::from_iter),
        2 => prop::collection::vec(long, 125..=131).prop_map(String::from_iter),
        1 => prop::collection::vec(char, 125..=131).prop_map(String::from_iter),
        1 => arbitrary_string(20),
    ]
    .boxed()
}

fn quantity() -> BoxedStrategy<i32> {
    prop_oneof![
        6 => 1i32..=100,
        2 => -2i32..=2,
        2 => 98i32..=103,
        1 => any::<i32>(),
        1 => prop::sample::select(vec![i32::MIN, i32::MAX]),
    ]
    .boxed()
}

fn money() -> BoxedStrategy<Money> {
    let currency = prop_oneof![
        8 => Just("INR".to_owned()),
        1 => prop::sample::select(vec!["USD", "inr", "IN", "INRR", "", "\u{406}NR"]).prop_map(str::to_owned),
        1 => arbitrary_string(5),
    ];
    let units = prop_oneof![
        6 => 0i64..=2_000,
        2 => MAX_PRICE_UNITS - 2..=MAX_PRICE_UNITS + 2,
        1 => -2i64..=0,
        1 => any::<i64>(),
    ];
    let nanos = prop_oneof![
        6 => Just(0),
        3 => (0i32..1_000_000).prop_map(|micros| micros * 1_000),
        1 => any::<i32>(),
        1 => -1_001i32..=1_001,
    ];
    (currency, units, nanos).prop_map(|(currency_code, units, nanos)| Money { currency_code, units, nanos }).boxed()
}

fn order() -> BoxedStrategy<pb::Order> {
    (deal_name(), customer(), quantity(), prop::option::weighted(0.5, money()), arbitrary_string(8), any::<i32>())
        .prop_map(|(deal, customer_id, quantity, unit_price, name, state)| pb::Order {
            name,
            deal,
            customer_id,
            quantity,
            unit_price,
            state,
            ..Default::default()
        })
        .boxed()
}

fn create_request() -> BoxedStrategy<pb::CreateOrderRequest> {
    (prop::option::weighted(0.95, order()), request_id())
        .prop_map(|(order, request_id)| pb::CreateOrderRequest { order, request_id, waitlist_entry: String::new() })
        .boxed()
}

fn buyer() -> BoxedStrategy<Option<String>> {
    prop::option::weighted(0.6, customer()).boxed()
}

// ---------------------------------------------------------------------------------------------
// The oracle
// ---------------------------------------------------------------------------------------------

fn oracle_customer(value: &str) -> Option<String> {
    let chars = value.chars().count();
    ((1..=128).contains(&chars) && !value.chars().any(char::is_control)).then(|| value.to_owned())
}

fn oracle_price(money: &Money) -> Option<Price> {
    let code_ok = money.currency_code.len() == 3 && money.currency_code.chars().all(|c| c.is_ascii_uppercase());
    let nanos_ok = (0..1_000_000_000).contains(&money.nanos) && money.nanos % 1_000 == 0;
    let units_ok = (0..=MAX_PRICE_UNITS).contains(&money.units);
    (code_ok && nanos_ok && units_ok && (money.units > 0 || money.nanos > 0)).then(|| {
        Price::from_stored(money.currency_code.clone(), money.units * 1_000_000 + i64::from(money.nanos / 1_000))
    })
}

fn oracle_deal(name: &str) -> Option<Uuid> {
    Uuid::try_parse(name.strip_prefix("deals/")?).ok()
}

/// The fields a refusal must name, in order, with the price's sub-fields as one `order.unit_price`;
/// or the order to place.
fn oracle(request: &pb::CreateOrderRequest, buyer: Option<&str>) -> Result<NewOrder, Vec<&'static str>> {
    let mut bad = Vec::new();
    let request_id = if request.request_id.is_empty() {
        None
    } else {
        let id = Uuid::try_parse(&request.request_id).ok();
        if id.is_none() {
            bad.push("request_id");
        }
        id
    };
    let Some(order) = &request.order else {
        bad.push("order");
        return Err(bad);
    };
    let deal_id = oracle_deal(&order.deal);
    if deal_id.is_none() {
        bad.push("order.deal");
    }
    let customer_id = match buyer {
        Some(buyer) => oracle_customer(buyer).ok_or(BUYER_FIELD),
        None => oracle_customer(&order.customer_id).ok_or("order.customer_id"),
    };
    if let Err(field) = customer_id {
        bad.push(field);
    }
    let quantity = (1..=100).contains(&order.quantity).then_some(order.quantity);
    if quantity.is_none() {
        bad.push("order.quantity");
    }
    let shown_unit_price = order.unit_price.as_ref().map(oracle_price);
    if shown_unit_price.as_ref().is_some_and(Option::is_none) {
        bad.push("order.unit_price");
    }
    match (deal_id, customer_id, quantity) {
        (Some(deal_id), Ok(customer_id), Some(quantity)) if bad.is_empty() => Ok(NewOrder {
            deal_id,
            customer_id,
            quantity,
            shown_unit_price: shown_unit_price.flatten(),
            request_id,
            waitlist_entry: None,
        }),
        _ => Err(bad),
    }
}

/// The fields named, with a price's sub-fields (`order.unit_price.units`, …) merged into one
/// `order.unit_price`.
fn named_fields(violations: &Violations) -> Result<Vec<String>, TestCaseError> {
    let mut fields: Vec<String> = Vec::new();
    for field in violations.fields() {
        let field = if field.starts_with("order.unit_price") { "order.unit_price" } else { field };
        if fields.last().map(String::as_str) != Some(field) {
            fields.push(field.to_owned());
        }
    }
    Ok(fields)
}

fn assert_valid(order: &NewOrder, request: &pb::CreateOrderRequest, buyer: Option<&str>) -> Result<(), TestCaseError> {
    let customer = &order.customer_id;
    prop_assert!((1..=MAX_CUSTOMER_ID_CHARS).contains(&customer.chars().count()));
    prop_assert!(!customer.chars().any(char::is_control));
    // The buyer is the token's subject whenever there is one, never the payload's customer_id.
    let expected_customer = buyer.unwrap_or(&request.order.as_ref().unwrap().customer_id);
    prop_assert_eq!(customer.as_str(), expected_customer);
    prop_assert!((1..=100).contains(&order.quantity));
    if let Some(price) = &order.shown_unit_price {
        prop_assert!(price.micros() > 0);
        prop_assert!(price.to_proto().units <= MAX_PRICE_UNITS);
        let code = price.currency_code();
        prop_assert!(code.len() == 3 && code.bytes().all(|byte| byte.is_ascii_uppercase()));
        // The largest order's total fits: no overflow is possible.
        prop_assert!(price.times(order.quantity).is_some());
        prop_assert!(price.times(100).is_some());
    }
    prop_assert_eq!(order.request_id.is_some(), !request.request_id.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn new_order_accepts_exactly_the_valid_orders(request in create_request(), buyer in buyer()) {
        let result = new_order(&request, buyer.as_deref());
        let again = new_order(&request, buyer.as_deref());
        prop_assert_eq!(format!("{result:?}"), format!("{again:?}"));
        match (result, oracle(&request, buyer.as_deref())) {
            (Ok(order), Ok(expected)) => {
                assert_valid(&order, &request, buyer.as_deref())?;
                prop_assert_eq!(order, expected);
            }
            (Err(err), Err(expected)) => {
                let fields = named_fields(&err)?;
                prop_assert_eq!(&fields, &expected);
                for field in &fields {
                    let known = ["request_id", "order", BUYER_FIELD].contains(&field.as_str());
                    prop_assert!(known || field.starts_with("order."), "field {:?}", field);
                }
            }
            (Ok(order), Err(expected)) => prop_assert!(false, "accepted {:?}; the oracle names {:?}", order, expected),
            (Err(err), Ok(expected)) => prop_assert!(false, "refused {:?}: {:?}", expected, err),
        }
    }

    #[test]
    fn the_buyer_is_never_taken_from_the_payload_when_a_token_names_one(
        request in create_request(),
        buyer in customer(),
    ) {
        if let Ok(order) = new_order(&request, Some(&buyer)) {
            prop_assert_eq!(order.customer_id, buyer);
        }
    }
}

/// The generators must produce valid orders often, or the properties above hold vacuously.
#[test]
fn the_generators_produce_valid_orders_often_enough() {
    let mut runner = TestRunner::deterministic();
    let strategy = (create_request(), buyer());
    let valid = (0..300)
        .filter(|_| {
            let (request, buyer) = strategy.new_tree(&mut runner).unwrap().current();
            new_order(&request, buyer.as_deref()).is_ok()
        })
        .count();
    assert!(valid >= 30, "only {valid} of 300 generated orders are valid");
}
