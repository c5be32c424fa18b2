use chrono::TimeZone;

use super::*;
use crate::proto::Money;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap()
}

fn inr(units: i64) -> Option<Money> {
    Some(Money { currency_code: "INR".into(), units, nanos: 0 })
}

fn valid_request() -> pb::Deal {
    pb::Deal {
        product_name: "Phone".into(),
        actual_price: inr(1000),
        final_price: inr(600),
        total_units: 50,
        expire_time: Some(time::to_proto(now() + TimeDelta::hours(2))),
        ..Default::default()
    }
}

fn invalid_fields(result: Result<DealTerms, DealError>) -> Vec<String> {
    match result {
        Err(DealError::InvalidArgument(violations)) => violations.fields().map(str::to_owned).collect(),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

fn stored(terms: DealTerms, available_units: i32, state: DealState) -> Deal {
    Deal { id: Uuid::new_v4(), terms, available_units, state, create_time: now(), update_time: now() }
}

#[test]
fn a_valid_deal_starts_now_by_default() {
    let terms = new_deal(Some(&valid_request()), now()).unwrap();
    assert_eq!(terms.start_time, now());
    assert_eq!(terms.product_name, "Phone");
    assert_eq!(initial_state(&terms, now()), DealState::Active);
}

#[test]
fn a_deal_may_be_scheduled_for_the_next_midnight() {
    let midnight = Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap();
    let request = pb::Deal {
        start_time: Some(time::to_proto(midnight)),
        expire_time: Some(time::to_proto(midnight + MAX_DEAL_DURATION)),
        ..valid_request()
    };
    let terms = new_deal(Some(&request), now()).unwrap();
    assert_eq!(initial_state(&terms, now()), DealState::Scheduled);
}

#[test]
fn every_bad_field_is_named_at_once() {
    let request = pb::Deal {
        product_name: " \t ".into(),
        actual_price: None,
        final_price: inr(0),
        total_units: 0,
        expire_time: None,
        ..Default::default()
    };
    assert_eq!(
        invalid_fields(new_deal(Some(&request), now())),
        ["deal.product_name", "deal.actual_price", "deal.final_price", "deal.total_units", "deal.expire_time"]
    );
    assert_eq!(invalid_fields(new_deal(None, now())), ["deal"]);
}

#[test]
fn final_price_must_not_exceed_actual_price_nor_change_currency() {
    let above = pb::Deal { final_price: inr(1001), ..valid_request() };
    assert_eq!(invalid_fields(new_deal(Some(&above), now())), ["deal.final_price"]);
    let equal = pb::Deal { final_price: inr(1000), ..valid_request() };
    assert!(new_deal(Some(&equal), now()).is_ok());
    let other_currency =
        pb::Deal { final_price: Some(Money { currency_code: "USD".into(), units: 5, nanos: 0 }), ..valid_request() };
    assert_eq!(invalid_fields(new_deal(Some(&other_currency), now())), ["deal.final_price.currency_code"]);
}

#[test]
fn the_window_is_in_the_future_after_the_start_and_at_most_12_hours() {
    let at = |expire: DateTime<Utc>| pb::Deal { expire_time: Some(time::to_proto(expire)), ..valid_request() };
    assert_eq!(invalid_fields(new_deal(Some(&at(now())), now())), ["deal.expire_time"]);
    assert_eq!(invalid_fields(new_deal(Some(&at(now() - TimeDelta::seconds(1))), now())), ["deal.expire_time"]);
    assert!(new_deal(Some(&at(now() + MAX_DEAL_DURATION)), now()).is_ok());
    assert_eq!(
        invalid_fields(new_deal(Some(&at(now() + MAX_DEAL_DURATION + TimeDelta::seconds(1))), now())),
        ["deal.expire_time"]
    );
    let late_start = pb::Deal { start_time: Some(time::to_proto(now() + TimeDelta::hours(3))), ..valid_request() };
    assert_eq!(invalid_fields(new_deal(Some(&late_start), now())), ["deal.expire_time"]);
    let past_start = pb::Deal { start_time: Some(time::to_proto(now() - TimeDelta::hours(1))), ..valid_request() };
    assert_eq!(invalid_fields(new_deal(Some(&past_start), now())), ["deal.start_time"]);
}

#[test]
fn product_names_are_trimmed_bounded_and_printable() {
    let named = |name: &str| pb::Deal { product_name: name.into(), ..valid_request() };
    assert_eq!(new_deal(Some(&named("  Phone ")), now()).unwrap().product_name, "Phone");
    assert!(new_deal(Some(&named(&"é".repeat(MAX_PRODUCT_NAME_CHARS))), now()).is_ok());
    for bad in ["", "   ", "a\u{0}b", "line\nbreak", &"x".repeat(MAX_PRODUCT_NAME_CHARS + 1)] {
        assert_eq!(invalid_fields(new_deal(Some(&named(bad)), now())), ["deal.product_name"], "{bad:?}");
    }
}

#[test]
fn a_product_name_needs_a_visible_character() {
    let named = |name: &str| pb::Deal { product_name: name.into(), ..valid_request() };
    let invisible = [
        "\u{200B}\u{200C}\u{200D}\u{FEFF}",
        "\u{2060}",
        "\u{3164}\u{FFA0}",
        "\u{00A0}\u{200B}\u{3000}",
        "\u{E0041}\u{FE0F}",
    ];
    for name in invisible {
        let err = new_deal(Some(&named(name)), now()).unwrap_err();
        assert_eq!(invalid_fields(Err(err)), ["deal.product_name"], "{name:?}");
    }
    // One visible character is enough, and invisible ones beside it are kept as sent.
    for name in ["\u{200B}x\u{200B}", "\u{0301}", "👩\u{200D}💻", "\u{2063}."] {
        assert_eq!(new_deal(Some(&named(name)), now()).unwrap().product_name, name, "{name:?}");
    }
}

/// The table against Unicode's own file, where Debian's `unicode-data` package put it (CI installs
/// it and sets `TOPKART_REQUIRE_UNICODE_DATA`; elsewhere the test says it skipped).
#[test]
fn default_ignorable_is_unicodes_set() {
    let path = "/usr/share/unicode/DerivedCoreProperties.txt";
    let Ok(text) = std::fs::read_to_string(path) else {
        assert!(std::env::var_os("TOPKART_REQUIRE_UNICODE_DATA").is_none(), "{path} is missing");
        eprintln!("skipped: no {path} (apt-get install unicode-data)");
        return;
    };
    let parse = |hex: &str| char::from_u32(u32::from_str_radix(hex.trim(), 16).unwrap()).unwrap();
    let from_unicode: Vec<char> = text
        .lines()
        .filter_map(|line| line.split('#').next()?.split_once(';'))
        .filter(|(_, property)| property.trim() == "Default_Ignorable_Code_Point")
        .flat_map(|(range, _)| {
            let (first, last) = range.split_once("..").unwrap_or((range, range));
            parse(first)..=parse(last)
        })
        .collect();
    let ours: Vec<char> = DEFAULT_IGNORABLE.iter().flat_map(|&(first, last)| first..=last).collect();
    assert_eq!(ours, from_unicode);
}

#[test]
fn an_update_changes_only_the_masked_fields() {
    let current = stored(new_deal(Some(&valid_request()), now()).unwrap(), 50, DealState::Active);
    let patch = pb::Deal { product_name: "Tablet".into(), final_price: inr(1), total_units: 7, ..Default::default() };
    let terms = update_deal(&current, &patch, &["product_name".into()], now()).unwrap();
    assert_eq!(terms, DealTerms { product_name: "Tablet".into(), ..current.terms });
}

#[test]
fn an_update_cannot_break_a_rule() {
    let current = stored(new_deal(Some(&valid_request()), now()).unwrap(), 40, DealState::Active);
    let above_actual = pb::Deal { final_price: inr(5000), ..Default::default() };
    assert_eq!(
        invalid_fields(update_deal(&current, &above_actual, &["final_price".into()], now())),
        ["deal.final_price"]
    );
    let below_sold = pb::Deal { total_units: 9, ..Default::default() };
    assert!(matches!(
        update_deal(&current, &below_sold, &["total_units".into()], now()),
        Err(DealError::TotalUnitsBelowSold { sold: 10 })
    ));
    let exactly_sold = pb::Deal { total_units: 10, ..Default::default() };
    assert_eq!(update_deal(&current, &exactly_sold, &["total_units".into()], now()).unwrap().total_units, 10);
    let moved_start =
        pb::Deal { start_time: Some(time::to_proto(now() + TimeDelta::minutes(5))), ..Default::default() };
    assert!(matches!(
        update_deal(&current, &moved_start, &["start_time".into()], now()),
        Err(DealError::StartTimeLocked)
    ));
}

#[test]
fn an_update_needs_a_mask_of_updatable_fields() {
    let current = stored(new_deal(Some(&valid_request()), now()).unwrap(), 50, DealState::Active);
    let patch = pb::Deal::default();
    assert_eq!(invalid_fields(update_deal(&current, &patch, &[], now())), ["update_mask"]);
    assert_eq!(
        invalid_fields(update_deal(&current, &patch, &["available_units".into(), "*".into(), "colour".into()], now())),
        ["update_mask.paths[0]", "update_mask.paths[1]", "update_mask.paths[2]"]
    );
}

#[test]
fn an_expired_deal_cannot_be_updated() {
    let current = stored(new_deal(Some(&valid_request()), now()).unwrap(), 50, DealState::Expired);
    let patch = pb::Deal { product_name: "Tablet".into(), ..Default::default() };
    assert!(matches!(update_deal(&current, &patch, &["product_name".into()], now()), Err(DealError::DealExpired)));
}

#[test]
fn a_refusal_says_why() {
    let terms = new_deal(Some(&valid_request()), now()).unwrap();
    let price = terms.final_price.clone();
    let active = stored(terms.clone(), 3, DealState::Active);
    assert!(refusal(&active, 3, Some(&price)).is_none());
    assert!(matches!(refusal(&active, 4, None), Some(DealError::InsufficientUnits { requested: 4, available: 3 })));
    let shown = Price::from_stored("INR".into(), price.micros() - 1);
    assert!(matches!(refusal(&active, 1, Some(&shown)), Some(DealError::PriceChanged { .. })));
    assert!(matches!(refusal(&stored(terms.clone(), 3, DealState::Expired), 1, None), Some(DealError::DealExpired)));
    assert!(matches!(refusal(&stored(terms, 3, DealState::Scheduled), 1, None), Some(DealError::DealNotStarted)));
}

#[test]
fn a_start_before_the_last_midnight_is_refused() {
    let just_after_midnight = Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 10).unwrap();
    let request = pb::Deal {
        start_time: Some(time::to_proto(just_after_midnight - TimeDelta::seconds(20))),
        expire_time: Some(time::to_proto(just_after_midnight + TimeDelta::hours(2))),
        ..valid_request()
    };
    assert_eq!(invalid_fields(new_deal(Some(&request), just_after_midnight)), ["deal.start_time"]);
    assert_eq!(
        daily_reset_after(just_after_midnight - TimeDelta::seconds(20)),
        just_after_midnight - TimeDelta::seconds(10)
    );
}

#[test]
fn an_unchanged_start_time_may_be_named_in_the_mask_of_a_started_deal() {
    let current = stored(new_deal(Some(&valid_request()), now()).unwrap(), 50, DealState::Active);
    let later = now() + TimeDelta::minutes(5);
    let patch = pb::Deal { start_time: Some(time::to_proto(current.terms.start_time)), ..Default::default() };
    assert_eq!(update_deal(&current, &patch, &["start_time".into()], later).unwrap(), current.terms);
}
