//! Property tests of the deal rules: arbitrary `CreateDeal` and `UpdateDeal` requests (any strings,
//! any integers, timestamps around `now` and far from it) against an independent reading of the
//! rules in README.md. Whatever `new_deal` and `update_deal` accept satisfies every rule, whatever
//! they refuse is INVALID_ARGUMENT naming `deal…` fields (or a stated precondition), and both agree
//! with the oracle here on which requests are valid.

use chrono::{Datelike, NaiveTime, TimeZone};
use proptest::{prelude::*, strategy::ValueTree, test_runner::TestRunner};
use prost_types::Timestamp;

use chrono::{DateTime, TimeDelta, Utc};
use topkart::{
    deal::{domain::*, error::DealError},
    proto::{Money, deal as pb},
    shared::{
        money::{MAX_PRICE_UNITS, Price},
        time,
    },
};
use uuid::Uuid;

const CASES: u32 = 512;

fn config() -> ProptestConfig {
    ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() }
}

const HOUR: i64 = 3_600_000_000;
const MAX_PRICE_MICROS: i64 = 1_000_000_000 * 1_000_000 + 999_999;

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// An instant in one fixed day, often close to its ends, where the daily reset matters.
fn now_strategy() -> BoxedStrategy<DateTime<Utc>> {
    let day = Utc.with_ymd_and_hms(2026, 11, 25, 0, 0, 0).unwrap();
    prop_oneof![
        3 => (0i64..86_400_000_000).prop_map(move |micros| day + TimeDelta::microseconds(micros)),
        1 => (0i64..120_000_000).prop_map(move |micros| day + TimeDelta::microseconds(micros)),
        1 => (0i64..120_000_000).prop_map(move |micros| day + TimeDelta::days(1) - TimeDelta::microseconds(micros + 1)),
        1 => Just(day + TimeDelta::hours(10)),
    ]
    .boxed()
}

/// A character of a product name: mostly letters, often blanks, controls and tricky Unicode.
fn name_char() -> BoxedStrategy<char> {
    prop_oneof![
        12 => prop::char::range('a', 'z'),
        2 => Just(' '),
        1 => prop::sample::select(vec![
            '\t', '\n', '\r', '\0', '\u{7}', '\u{1b}', '\u{7f}', '\u{85}', '\u{9f}', '\u{a0}', '\u{2028}', '\u{3000}',
            '\u{200b}', '\u{200c}', '\u{200d}', '\u{2060}', '\u{3164}', '\u{e0041}', '\u{fe0f}',
            '\u{202e}', '\u{feff}', '\u{301}', 'é', '\u{430}', '😀', '\u{10ffff}',
        ]),
        1 => any::<char>(),
    ]
    .boxed()
}

fn product_name() -> BoxedStrategy<String> {
    let blank = prop::sample::select(vec![' ', '\t', '\n', '\u{85}', '\u{a0}', '\u{3000}']);
    let long_char = prop_oneof![30 => prop::char::range('a', 'z'), 2 => Just(' '), 2 => Just('é'), 1 => name_char()];
    prop_oneof![
        4 => prop::collection::vec(name_char(), 0..16).prop_map(|chars| chars.into_iter().collect::<String>()),
        3 => (
            prop::collection::vec(blank.clone(), 0..3),
            prop::collection::vec(long_char, 196..=204),
            prop::collection::vec(blank, 0..3),
        )
            .prop_map(|(before, body, after)| before.into_iter().chain(body).chain(after).collect()),
        1 => prop::collection::vec(any::<char>(), 0..40).prop_map(String::from_iter),
        // Names that show nothing, or all but one character.
        1 => (
            prop::collection::vec(
                prop::sample::select(vec![' ', '\u{a0}', '\u{ad}', '\u{200b}', '\u{200d}', '\u{2063}', '\u{feff}', '\u{e0020}']),
                1..8,
            ),
            prop::option::of(name_char()),
        )
            .prop_map(|(invisible, visible)| invisible.into_iter().chain(visible).collect()),
    ]
    .boxed()
}

fn currency() -> BoxedStrategy<String> {
    prop_oneof![
        12 => Just("INR".to_owned()),
        2 => Just("USD".to_owned()),
        1 => prop::sample::select(vec!["inr", "IN", "INRR", "", "I\u{0}R", "\u{406}NR", "123", "Inr"])
            .prop_map(str::to_owned),
        1 => prop::collection::vec(any::<char>(), 0..5).prop_map(|chars| chars.into_iter().collect::<String>()),
    ]
    .boxed()
}

fn units() -> BoxedStrategy<i64> {
    prop_oneof![
        8 => 1i64..=2_000,
        2 => -2i64..=2,
        2 => MAX_PRICE_UNITS - 2..=MAX_PRICE_UNITS + 2,
        1 => any::<i64>(),
        1 => prop::sample::select(vec![i64::MIN, i64::MAX, i64::MIN + 1, i64::MAX / 1_000_000 + 1]),
    ]
    .boxed()
}

fn nanos() -> BoxedStrategy<i32> {
    prop_oneof![
        8 => Just(0),
        4 => (0i32..1_000_000).prop_map(|micros| micros * 1_000),
        1 => 999_998_999i32..=1_000_000_001,
        1 => -1_001i32..=1_001,
        1 => any::<i32>(),
    ]
    .boxed()
}

fn money() -> BoxedStrategy<Money> {
    (currency(), units(), nanos())
        .prop_map(|(currency_code, units, nanos)| Money { currency_code, units, nanos })
        .boxed()
}

/// An instant relative to `now` (known only when the request is built).
#[derive(Debug, Clone)]
enum When {
    /// `now` plus this many microseconds, plus sub-microsecond nanos that must be dropped.
    FromNow { micros: i64, extra_nanos: i32 },
    /// The 00:00 UTC of `now`'s day plus this many microseconds.
    FromMidnight(i64),
    /// Exactly this timestamp, valid or not.
    Raw(Timestamp),
}

fn when() -> BoxedStrategy<When> {
    let edges = prop::sample::select(vec![
        0,
        1,
        -1,
        -60_000_000,
        -60_000_001,
        -59_999_999,
        HOUR,
        12 * HOUR,
        12 * HOUR + 1,
        -12 * HOUR,
        24 * HOUR,
        -24 * HOUR,
    ]);
    prop_oneof![
        6 => (-30 * HOUR..=40 * HOUR, 0i32..1_000)
            .prop_map(|(micros, extra_nanos)| When::FromNow { micros, extra_nanos }),
        3 => edges.prop_map(|micros| When::FromNow { micros, extra_nanos: 0 }),
        2 => prop::sample::select(vec![-1, 0, 1, -60_000_000, 24 * HOUR - 1, 24 * HOUR, 24 * HOUR + 1, 36 * HOUR])
            .prop_map(When::FromMidnight),
        1 => (any::<i64>(), any::<i32>()).prop_map(|(seconds, nanos)| When::Raw(Timestamp { seconds, nanos })),
        1 => prop::sample::select(vec![
            Timestamp { seconds: -1, nanos: 0 },
            Timestamp { seconds: 0, nanos: -1 },
            Timestamp { seconds: 253_402_300_799, nanos: 999_999_999 },
            Timestamp { seconds: 253_402_300_800, nanos: 0 },
            Timestamp { seconds: 1_764_000_000, nanos: 1_000_000_000 },
        ])
        .prop_map(When::Raw),
    ]
    .boxed()
}

impl When {
    fn timestamp(&self, now: DateTime<Utc>) -> Timestamp {
        let instant = match self {
            Self::FromNow { micros, extra_nanos } => {
                let at = time::to_proto(now + TimeDelta::microseconds(*micros));
                return Timestamp { nanos: at.nanos + extra_nanos, ..at };
            }
            Self::FromMidnight(micros) => last_midnight(now) + TimeDelta::microseconds(*micros),
            Self::Raw(timestamp) => return *timestamp,
        };
        time::to_proto(instant)
    }
}

/// When a deal expires: unset, an instant, or an offset from its start (to hit the 12-hour edges).
#[derive(Debug, Clone)]
enum Expiry {
    Unset,
    At(When),
    AfterStart(i64),
}

fn expiry() -> BoxedStrategy<Expiry> {
    prop_oneof![
        1 => Just(Expiry::Unset),
        3 => when().prop_map(Expiry::At),
        2 => prop_oneof![
            3 => 1i64..=12 * HOUR,
            1 => prop::sample::select(vec![0, 1, -1, 12 * HOUR, 12 * HOUR + 1, 12 * HOUR - 1, 12 * HOUR + 1_000_000]),
            1 => -2 * HOUR..=14 * HOUR,
        ]
        .prop_map(Expiry::AfterStart),
    ]
    .boxed()
}

/// A `pb::Deal` to be built at some `now`.
#[derive(Debug, Clone)]
struct DealInput {
    name: String,
    product_name: String,
    actual_price: Option<Money>,
    final_price: Option<Money>,
    total_units: i32,
    available_units: i32,
    state: i32,
    start_time: Option<When>,
    expire_time: Expiry,
    max_units_per_customer: Option<i32>,
    approval_window: Option<prost_types::Duration>,
    offer_window: Option<prost_types::Duration>,
}

/// An approval window: often unset, mostly valid, sometimes at or past the edges or with nanos.
fn window_strategy() -> BoxedStrategy<Option<prost_types::Duration>> {
    let duration = |seconds: i64, nanos: i32| prost_types::Duration { seconds, nanos };
    prop_oneof![
        4 => Just(None),
        3 => (60i64..=43_200).prop_map(move |seconds| Some(duration(seconds, 0))),
        1 => prop::sample::select(vec![59, 60, 43_200, 43_201, 0, -60, i64::MAX, i64::MIN])
            .prop_map(move |seconds| Some(duration(seconds, 0))),
        1 => (any::<i64>(), any::<i32>()).prop_map(move |(seconds, nanos)| Some(duration(seconds, nanos))),
    ]
    .boxed()
}

/// A per-customer limit: often unset, mostly valid, sometimes just outside the range or wild.
fn limit_strategy() -> BoxedStrategy<Option<i32>> {
    prop_oneof![
        4 => Just(None),
        4 => (1i32..=100).prop_map(Some),
        1 => prop::sample::select(vec![0, -1, 1, MAX_TOTAL_UNITS, MAX_TOTAL_UNITS + 1, i32::MIN, i32::MAX]).prop_map(Some),
        1 => any::<i32>().prop_map(Some),
    ]
    .boxed()
}

fn total_units_strategy() -> BoxedStrategy<i32> {
    prop_oneof![
        8 => 1i32..=1_000,
        2 => -2i32..=2,
        2 => MAX_TOTAL_UNITS - 2..=MAX_TOTAL_UNITS + 2,
        1 => any::<i32>(),
        1 => prop::sample::select(vec![i32::MIN, i32::MAX]),
    ]
    .boxed()
}

/// Any deal at all: almost always invalid somewhere.
fn arbitrary_deal() -> BoxedStrategy<DealInput> {
    let output_only =
        (prop::collection::vec(any::<char>(), 0..8).prop_map(String::from_iter), any::<i32>(), any::<i32>());
    (
        product_name(),
        prop::option::weighted(0.95, money()),
        prop::option::weighted(0.95, money()),
        total_units_strategy(),
        prop::option::of(when()),
        expiry(),
        output_only,
        (limit_strategy(), window_strategy(), window_strategy()),
    )
        .prop_map(
            |(
                product_name,
                actual_price,
                final_price,
                total_units,
                start_time,
                expire_time,
                output_only,
                (limit, window, offer_window),
            )| {
                DealInput {
                    name: output_only.0,
                    product_name,
                    actual_price,
                    final_price,
                    total_units,
                    available_units: output_only.1,
                    state: output_only.2,
                    start_time,
                    expire_time,
                    max_units_per_customer: limit,
                    approval_window: window,
                    offer_window,
                }
            },
        )
        .boxed()
}

/// A valid deal (at most edges aside) with each field, now and then, replaced by an arbitrary one.
fn nearly_valid_deal() -> BoxedStrategy<DealInput> {
    let inr = |micros: i64| Money {
        currency_code: "INR".into(),
        units: micros / 1_000_000,
        nanos: i32::try_from(micros % 1_000_000).unwrap() * 1_000,
    };
    let name_char = prop_oneof![8 => prop::char::range('a', 'z'), 1 => Just(' '), 1 => Just('é'), 1 => Just('😀')];
    // Between `x` and `x`: 3 to 32 characters, or 198 to 203 around the limit of 200.
    let name = prop_oneof![
        3 => prop::collection::vec(name_char.clone(), 1..=30),
        1 => prop::collection::vec(name_char, 196..=201),
    ];
    let max_micros = MAX_PRICE_UNITS * 1_000_000 + 999_999;
    let micros = prop_oneof![
        4 => 1i64..=max_micros,
        1 => 1i64..=2_000_000,
        1 => prop::sample::select(vec![1, 1_000, MAX_PRICE_UNITS * 1_000_000, max_micros]),
    ];
    let start = prop_oneof![
        2 => Just(None),
        2 => (0..=6 * HOUR).prop_map(|micros| Some(When::FromNow { micros, extra_nanos: 0 })),
        1 => (-70_000_000..=-50_000_000i64).prop_map(|micros| Some(When::FromNow { micros, extra_nanos: 0 })),
        1 => prop::sample::select(vec![-60_000_000, -60_000_001, -59_999_999])
            .prop_map(|micros| Some(When::FromNow { micros, extra_nanos: 999 })),
        1 => prop::sample::select(vec![0, -1, 1, 24 * HOUR, 24 * HOUR - 1])
            .prop_map(|micros| Some(When::FromMidnight(micros))),
    ];
    let length = prop_oneof![
        3 => 1i64..=12 * HOUR,
        2 => prop::sample::select(vec![12 * HOUR, 12 * HOUR + 1, 12 * HOUR - 1, 0, 1, -1, 12 * HOUR + 1_000_000]),
    ];
    let valid = (
        name,
        micros.clone(),
        micros,
        prop_oneof![4 => 1i32..=MAX_TOTAL_UNITS, 1 => prop::sample::select(vec![1, MAX_TOTAL_UNITS])],
        start,
        length.prop_map(Expiry::AfterStart),
        (
            prop::option::of(1i32..=MAX_TOTAL_UNITS),
            prop::option::of((60i64..=43_200).prop_map(|seconds| prost_types::Duration { seconds, nanos: 0 })),
            prop::option::of((60i64..=3_600).prop_map(|seconds| prost_types::Duration { seconds, nanos: 0 })),
        ),
    )
        .prop_map(move |(name, a, b, total_units, start_time, expire_time, (limit, window, offer_window))| DealInput {
            name: String::new(),
            product_name: format!("x{}x", String::from_iter(name)),
            actual_price: Some(inr(a.max(b))),
            final_price: Some(inr(a.min(b))),
            total_units,
            available_units: 0,
            state: 0,
            start_time,
            expire_time,
            max_units_per_customer: limit,
            approval_window: window,
            offer_window,
        });
    let corrupt = 0.08;
    (
        valid,
        prop::option::weighted(corrupt, product_name()),
        prop::option::weighted(corrupt, prop::option::weighted(0.9, money())),
        prop::option::weighted(corrupt, prop::option::weighted(0.9, money())),
        prop::option::weighted(corrupt, total_units_strategy()),
        prop::option::weighted(corrupt, prop::option::of(when())),
        prop::option::weighted(corrupt, expiry()),
        (
            prop::option::weighted(corrupt, limit_strategy()),
            prop::option::weighted(corrupt, window_strategy()),
            prop::option::weighted(corrupt, window_strategy()),
        ),
    )
        .prop_map(|(valid, name, actual, final_, total, start, expire, (limit, window, offer))| DealInput {
            product_name: name.unwrap_or(valid.product_name),
            actual_price: actual.unwrap_or(valid.actual_price),
            final_price: final_.unwrap_or(valid.final_price),
            total_units: total.unwrap_or(valid.total_units),
            start_time: start.unwrap_or(valid.start_time),
            expire_time: expire.unwrap_or(valid.expire_time),
            max_units_per_customer: limit.unwrap_or(valid.max_units_per_customer),
            approval_window: window.unwrap_or(valid.approval_window),
            offer_window: offer.unwrap_or(valid.offer_window),
            ..valid
        })
        .boxed()
}

fn deal_input() -> BoxedStrategy<DealInput> {
    prop_oneof![arbitrary_deal(), nearly_valid_deal()].boxed()
}

impl DealInput {
    /// The request at `now`; an expiry relative to the start counts from the request's start, else
    /// from `start` (now for a new deal, the current start for an update).
    fn request(&self, now: DateTime<Utc>, start: DateTime<Utc>) -> pb::Deal {
        let start_time = self.start_time.as_ref().map(|start| start.timestamp(now));
        let expire_time = match &self.expire_time {
            Expiry::Unset => None,
            Expiry::At(when) => Some(when.timestamp(now)),
            Expiry::AfterStart(micros) => {
                let start = start_time.as_ref().map_or(Some(start), oracle_time);
                start.map(|start| time::to_proto(start + TimeDelta::microseconds(*micros)))
            }
        };
        pb::Deal {
            name: self.name.clone(),
            product_name: self.product_name.clone(),
            actual_price: self.actual_price.clone(),
            final_price: self.final_price.clone(),
            total_units: self.total_units,
            available_units: self.available_units,
            start_time,
            expire_time,
            max_units_per_customer: self.max_units_per_customer,
            approval_window: self.approval_window,
            offer_window: self.offer_window,
            claimed_percent: self.available_units,
            state: self.state,
            create_time: None,
            update_time: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The oracle: the rules of README.md, written again without the code under test
// ---------------------------------------------------------------------------------------------

fn last_midnight(now: DateTime<Utc>) -> DateTime<Utc> {
    now.date_naive().and_time(NaiveTime::MIN).and_utc()
}

/// A product name as stored, if `raw` is a valid one.
fn oracle_name(raw: &str) -> Option<String> {
    let trimmed = raw.trim_matches(char::is_whitespace);
    let chars = trimmed.chars().count();
    let visible = trimmed.chars().any(|c| !c.is_whitespace() && !oracle_default_ignorable(c));
    ((1..=200).contains(&chars) && !trimmed.chars().any(|c| c.is_control()) && visible).then(|| trimmed.to_owned())
}

/// Default_Ignorable_Code_Point, written out from Unicode's file independently of the domain's table.
fn oracle_default_ignorable(c: char) -> bool {
    matches!(u32::from(c),
        0xAD | 0x34F | 0x61C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F | 0x200B..=0x200F
        | 0x202A..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFF8
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0000..=0xE0FFF)
}

/// A price as (currency, micros), if `money` is a valid one.
fn oracle_price(money: Option<&Money>) -> Option<(String, i64)> {
    let money = money?;
    let code_ok = money.currency_code.len() == 3 && money.currency_code.chars().all(|c| c.is_ascii_uppercase());
    let nanos_ok = (0..1_000_000_000).contains(&money.nanos) && money.nanos % 1_000 == 0;
    let units_ok = (0..=1_000_000_000).contains(&money.units);
    let positive = money.units > 0 || money.nanos > 0;
    (code_ok && nanos_ok && units_ok && positive)
        .then(|| (money.currency_code.clone(), money.units * 1_000_000 + i64::from(money.nanos / 1_000)))
}

/// An instant, truncated to the microsecond, if `timestamp` is one between 1970 and 9999.
fn oracle_time(timestamp: &Timestamp) -> Option<DateTime<Utc>> {
    let in_range = (0..=253_402_300_799).contains(&timestamp.seconds) && (0..1_000_000_000).contains(&timestamp.nanos);
    in_range.then(|| {
        DateTime::from_timestamp(timestamp.seconds, 0).unwrap()
            + TimeDelta::microseconds(i64::from(timestamp.nanos / 1_000))
    })
}

fn oracle_units(units: i32) -> Option<i32> {
    (1..=1_000_000).contains(&units).then_some(units)
}

/// The rules between fields, for terms valid field by field.
fn whole_ok(
    actual: &(String, i64),
    final_: &(String, i64),
    start: DateTime<Utc>,
    expire: DateTime<Utc>,
    now: DateTime<Utc>,
) -> bool {
    actual.0 == final_.0
        && final_.1 <= actual.1
        && start >= last_midnight(now)
        && expire > now
        && expire > start
        && expire - start <= TimeDelta::hours(12)
}

/// What `new_deal` must return at `now`: the terms, or `None` for INVALID_ARGUMENT.
fn oracle_new(deal: &pb::Deal, now: DateTime<Utc>) -> Option<DealTerms> {
    let name = oracle_name(&deal.product_name)?;
    let actual = oracle_price(deal.actual_price.as_ref())?;
    let final_ = oracle_price(deal.final_price.as_ref())?;
    let total = oracle_units(deal.total_units)?;
    let start = match &deal.start_time {
        None => now,
        Some(start) => oracle_time(start).filter(|start| *start >= now - TimeDelta::minutes(1))?,
    };
    let expire = oracle_time(deal.expire_time.as_ref()?)?;
    let limit = oracle_limit(deal.max_units_per_customer)?;
    let window = oracle_window(deal.approval_window.as_ref())?;
    let offer_window = oracle_offer_window(deal.offer_window.as_ref())?;
    whole_ok(&actual, &final_, start, expire, now).then(|| DealTerms {
        product_name: name,
        actual_price: Price::from_stored(actual.0, actual.1),
        final_price: Price::from_stored(final_.0, final_.1),
        total_units: total,
        start_time: start,
        expire_time: expire,
        max_units_per_customer: limit,
        approval_window_seconds: window,
        offer_window_seconds: offer_window,
    })
}

/// An approval window as the rules read it, in seconds: `Some(None)` for none, `None` when invalid.
fn oracle_window(window: Option<&prost_types::Duration>) -> Option<Option<i32>> {
    match window {
        None => Some(None),
        Some(window) => {
            (window.nanos == 0 && (60..=43_200).contains(&window.seconds)).then_some(Some(window.seconds as i32))
        }
    }
}

/// An offer window as the rules read it, in seconds: 300 when unset, `None` when invalid.
fn oracle_offer_window(window: Option<&prost_types::Duration>) -> Option<i32> {
    match window {
        None => Some(300),
        Some(window) => (window.nanos == 0 && (60..=3_600).contains(&window.seconds)).then_some(window.seconds as i32),
    }
}

/// A per-customer limit as the rules read it: `Some(None)` for no limit, `None` when invalid.
fn oracle_limit(limit: Option<i32>) -> Option<Option<i32>> {
    match limit {
        None => Some(None),
        Some(limit) => (1..=1_000_000).contains(&limit).then_some(Some(limit)),
    }
}

/// Every rule a deal's terms must satisfy whatever made them. `new_start` says whether the start
/// was set by this request (then it may not be in the past).
fn assert_terms_valid(terms: &DealTerms, now: DateTime<Utc>, new_start: bool) -> Result<(), TestCaseError> {
    let name = &terms.product_name;
    prop_assert_eq!(name.trim(), name.as_str(), "name not trimmed");
    prop_assert!((1..=200).contains(&name.chars().count()), "name of {} chars", name.chars().count());
    prop_assert!(!name.chars().any(char::is_control), "control character in {:?}", name);
    for price in [&terms.actual_price, &terms.final_price] {
        prop_assert!(price.micros() > 0 && price.micros() <= MAX_PRICE_MICROS, "{}", price);
        let code = price.currency_code();
        prop_assert!(code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()), "currency {:?}", code);
        let money = price.to_proto();
        prop_assert!(money.units <= MAX_PRICE_UNITS && (0..1_000_000_000).contains(&money.nanos));
    }
    prop_assert_eq!(terms.actual_price.currency_code(), terms.final_price.currency_code());
    prop_assert!(terms.final_price.micros() <= terms.actual_price.micros());
    prop_assert!((1..=MAX_TOTAL_UNITS).contains(&terms.total_units));
    prop_assert!(terms.expire_time > now, "expires at {} ≤ now {}", terms.expire_time, now);
    prop_assert!(terms.expire_time > terms.start_time);
    prop_assert!(terms.expire_time - terms.start_time <= MAX_DEAL_DURATION);
    prop_assert!(
        terms.start_time >= last_midnight(now),
        "starts {} before the last midnight of {}",
        terms.start_time,
        now
    );
    prop_assert!(daily_reset_after(terms.start_time) > now);
    if new_start {
        prop_assert!(terms.start_time >= now - START_TIME_TOLERANCE);
    }
    for instant in [terms.start_time, terms.expire_time] {
        prop_assert!((1970..=9999).contains(&instant.year()));
        prop_assert_eq!(instant.timestamp_subsec_nanos() % 1_000, 0);
    }
    Ok(())
}

fn invalid_fields(err: &DealError) -> Option<Vec<String>> {
    match err {
        DealError::InvalidArgument(violations) => Some(violations.fields().map(str::to_owned).collect()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// new_deal
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn new_deal_accepts_exactly_the_valid_deals(now in now_strategy(), input in deal_input()) {
        let request = input.request(now, now);
        let result = new_deal(Some(&request), now);
        let expected = oracle_new(&request, now);
        match (&result, &expected) {
            (Ok(terms), Some(expected)) => {
                assert_terms_valid(terms, now, request.start_time.is_some())?;
                prop_assert_eq!(terms, expected);
            }
            (Err(err), None) => {
                let fields = invalid_fields(err);
                prop_assert!(fields.is_some(), "not INVALID_ARGUMENT: {:?}", err);
                let fields = fields.unwrap();
                prop_assert!(!fields.is_empty());
                for field in &fields {
                    prop_assert!(field.starts_with("deal."), "field {:?} of {:?}", field, fields);
                }
                // A field wrong on its own is named, whatever else is wrong.
                let named = |prefix: &str| {
                    fields.iter().any(|field| field == prefix || field.starts_with(&format!("{prefix}.")))
                };
                if oracle_name(&request.product_name).is_none() {
                    prop_assert!(named("deal.product_name"), "{:?}", fields);
                }
                if oracle_price(request.actual_price.as_ref()).is_none() {
                    prop_assert!(named("deal.actual_price"), "{:?}", fields);
                }
                if oracle_price(request.final_price.as_ref()).is_none() {
                    prop_assert!(named("deal.final_price"), "{:?}", fields);
                }
                if oracle_units(request.total_units).is_none() {
                    prop_assert!(named("deal.total_units"), "{:?}", fields);
                }
                if request.expire_time.as_ref().and_then(oracle_time).is_none() {
                    prop_assert!(named("deal.expire_time"), "{:?}", fields);
                }
                if request.start_time.as_ref().is_some_and(|start| oracle_time(start).is_none()) {
                    prop_assert!(named("deal.start_time"), "{:?}", fields);
                }
            }
            (Ok(terms), None) => prop_assert!(false, "accepted an invalid deal: {:?}", terms),
            (Err(err), Some(terms)) => prop_assert!(false, "refused a valid deal {:?}: {:?}", terms, err),
        }
    }

    #[test]
    fn new_deal_without_a_deal_names_deal(now in now_strategy()) {
        let fields = invalid_fields(&new_deal(None, now).unwrap_err());
        prop_assert_eq!(fields, Some(vec!["deal".to_owned()]));
    }
}

/// The generator must produce valid deals often, or the properties above hold vacuously.
#[test]
fn the_generators_produce_valid_deals_often_enough() {
    let mut runner = TestRunner::deterministic();
    let strategy = (now_strategy(), deal_input());
    let valid = (0..300)
        .filter(|_| {
            let (now, input) = strategy.new_tree(&mut runner).unwrap().current();
            new_deal(Some(&input.request(now, now)), now).is_ok()
        })
        .count();
    assert!(valid >= 45, "only {valid} of 300 generated deals are valid");
}

// ---------------------------------------------------------------------------------------------
// update_deal
// ---------------------------------------------------------------------------------------------

/// A stored deal: valid terms as some earlier request made them, units partly reserved, and the
/// state the database would compute at `now` (or, sometimes, a stale one).
fn stored_deal(now: DateTime<Utc>) -> BoxedStrategy<Deal> {
    let price = (1i64..=2_000_000_000, 1i64..=2_000_000_000);
    (
        prop::collection::vec(prop::char::range('a', 'z'), 1..20),
        price,
        prop::sample::select(vec!["INR", "USD"]),
        prop_oneof![4 => 1i32..=100, 1 => 1i32..=MAX_TOTAL_UNITS],
        0.0f64..=1.0,
        -24 * HOUR..=36 * HOUR,
        1i64..=12 * HOUR,
        prop::option::weighted(
            0.1,
            prop::sample::select(vec![DealState::Scheduled, DealState::Active, DealState::Expired]),
        ),
    )
        .prop_map(move |(name, (a, b), currency, total, reserved, start, length, stale_state)| {
            let start = now + TimeDelta::microseconds(start);
            let terms = DealTerms {
                product_name: name.into_iter().collect(),
                actual_price: Price::from_stored(currency.into(), a.max(b)),
                final_price: Price::from_stored(currency.into(), a.min(b)),
                total_units: total,
                start_time: start,
                expire_time: start + TimeDelta::microseconds(length),
                max_units_per_customer: None,
                approval_window_seconds: None,
                offer_window_seconds: 300,
            };
            let state = if terms.expire_time <= now || daily_reset_after(start) <= now {
                DealState::Expired
            } else if start <= now {
                DealState::Active
            } else {
                DealState::Scheduled
            };
            let available = total - (f64::from(total) * reserved) as i32;
            Deal {
                id: Uuid::nil(),
                terms,
                available_units: available.clamp(0, total),
                state: stale_state.unwrap_or(state),
                create_time: now,
                update_time: now,
            }
        })
        .boxed()
}

fn mask_path() -> BoxedStrategy<String> {
    prop_oneof![
        8 => prop::sample::select(UPDATABLE_FIELDS.to_vec()).prop_map(str::to_owned),
        2 => prop::sample::select(vec![
            "name", "state", "available_units", "create_time", "update_time", "*", "", "product_name ",
            "PRODUCT_NAME", "actual_price.units", "deal.total_units", "expire_time\0",
        ])
        .prop_map(str::to_owned),
        1 => prop::collection::vec(any::<char>(), 0..12).prop_map(|path| path.into_iter().collect::<String>()),
    ]
    .boxed()
}

fn mask_strategy() -> BoxedStrategy<Vec<String>> {
    let updatable = prop::sample::select(UPDATABLE_FIELDS.to_vec()).prop_map(str::to_owned);
    prop_oneof![
        1 => Just(Vec::new()),
        8 => prop::collection::vec(updatable, 1..=2),
        4 => prop::collection::vec(mask_path(), 1..5),
    ]
    .boxed()
}

/// What `update_deal` must do, by the rules.
#[derive(Debug, PartialEq)]
enum Outcome {
    Terms(DealTerms),
    Invalid,
    Expired,
    StartTimeLocked,
    BelowSold,
}

fn mask_ok(mask: &[String]) -> bool {
    !mask.is_empty()
        && mask
            .iter()
            .enumerate()
            .all(|(index, path)| UPDATABLE_FIELDS.contains(&path.as_str()) && !mask[..index].contains(path))
}

fn oracle_update(current: &Deal, patch: &pb::Deal, mask: &[String], now: DateTime<Utc>) -> Outcome {
    if !mask_ok(mask) {
        return Outcome::Invalid;
    }
    if current.state == DealState::Expired {
        return Outcome::Expired;
    }
    let masked = |field: &str| mask.iter().any(|path| path == field);
    let new_start = patch.start_time.as_ref().and_then(oracle_time).filter(|start| *start != current.terms.start_time);
    if masked("start_time") && new_start.is_some() && current.state != DealState::Scheduled {
        return Outcome::StartTimeLocked;
    }
    let mut terms = current.terms.clone();
    let mut valid = true;
    let mut price = |masked: bool, money: Option<&Money>, slot: &mut Price| {
        if masked {
            match oracle_price(money) {
                Some((code, micros)) => *slot = Price::from_stored(code, micros),
                None => valid = false,
            }
        }
    };
    price(masked("actual_price"), patch.actual_price.as_ref(), &mut terms.actual_price);
    price(masked("final_price"), patch.final_price.as_ref(), &mut terms.final_price);
    if masked("product_name") {
        match oracle_name(&patch.product_name) {
            Some(name) => terms.product_name = name,
            None => valid = false,
        }
    }
    if masked("total_units") {
        match oracle_units(patch.total_units) {
            Some(units) => terms.total_units = units,
            None => valid = false,
        }
    }
    if masked("start_time") {
        match patch.start_time.as_ref().and_then(oracle_time) {
            None => valid = false,
            Some(start) if start == current.terms.start_time => {}
            Some(start) if start < now - TimeDelta::minutes(1) => valid = false,
            Some(start) => terms.start_time = start,
        }
    }
    if masked("expire_time") {
        match patch.expire_time.as_ref().and_then(oracle_time) {
            Some(expire) => terms.expire_time = expire,
            None => valid = false,
        }
    }
    if masked("approval_window") {
        match oracle_window(patch.approval_window.as_ref()) {
            Some(window) => terms.approval_window_seconds = window,
            None => valid = false,
        }
    }
    if masked("offer_window") {
        match oracle_offer_window(patch.offer_window.as_ref()) {
            Some(window) => terms.offer_window_seconds = window,
            None => valid = false,
        }
    }
    if masked("max_units_per_customer") {
        match oracle_limit(patch.max_units_per_customer) {
            Some(limit) => terms.max_units_per_customer = limit,
            None => valid = false,
        }
    }
    let actual = (terms.actual_price.currency_code().to_owned(), terms.actual_price.micros());
    let final_ = (terms.final_price.currency_code().to_owned(), terms.final_price.micros());
    if !valid || !whole_ok(&actual, &final_, terms.start_time, terms.expire_time, now) {
        return Outcome::Invalid;
    }
    if terms.total_units < current.terms.total_units - current.available_units {
        return Outcome::BelowSold;
    }
    Outcome::Terms(terms)
}

fn outcome(result: &Result<DealTerms, DealError>) -> Result<Outcome, String> {
    match result {
        Ok(terms) => Ok(Outcome::Terms(terms.clone())),
        Err(DealError::InvalidArgument(_)) => Ok(Outcome::Invalid),
        Err(DealError::DealExpired) => Ok(Outcome::Expired),
        Err(DealError::StartTimeLocked) => Ok(Outcome::StartTimeLocked),
        Err(DealError::TotalUnitsBelowSold { .. }) => Ok(Outcome::BelowSold),
        Err(other) => Err(format!("update_deal cannot fail with {other:?}")),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn update_deal_keeps_every_rule(
        (now, current) in now_strategy().prop_flat_map(|now| (Just(now), stored_deal(now))),
        input in deal_input(),
        mask in mask_strategy(),
    ) {
        let patch = input.request(now, current.terms.start_time);
        let before = current.clone();
        let result = update_deal(&current, &patch, &mask, now);
        // Pure: the same call gives the same answer and leaves the current deal as it was.
        prop_assert_eq!(format!("{result:?}"), format!("{:?}", update_deal(&current, &patch, &mask, now)));
        prop_assert_eq!(&current, &before);

        let got = outcome(&result).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&got, &oracle_update(&current, &patch, &mask, now), "mask {:?}", mask);
        match result {
            Ok(terms) => {
                let start_moved = terms.start_time != current.terms.start_time;
                assert_terms_valid(&terms, now, start_moved)?;
                prop_assert!(terms.total_units >= current.reserved_units());
                prop_assert!(!start_moved || current.state == DealState::Scheduled);
                // Only the masked fields change.
                let masked = |field: &str| mask.iter().any(|path| path == field);
                let t = &current.terms;
                prop_assert!(masked("product_name") || terms.product_name == t.product_name);
                prop_assert!(masked("actual_price") || terms.actual_price == t.actual_price);
                prop_assert!(masked("final_price") || terms.final_price == t.final_price);
                prop_assert!(masked("total_units") || terms.total_units == t.total_units);
                prop_assert!(masked("start_time") || terms.start_time == t.start_time);
                prop_assert!(masked("expire_time") || terms.expire_time == t.expire_time);
            }
            Err(DealError::InvalidArgument(violations)) => {
                let fields: Vec<_> = violations.fields().collect();
                prop_assert!(!fields.is_empty());
                let mask_fields = fields.iter().filter(|field| field.starts_with("update_mask")).count();
                if mask_ok(&mask) {
                    prop_assert_eq!(mask_fields, 0, "{:?}", fields);
                    for field in &fields {
                        prop_assert!(field.starts_with("deal."), "field {:?} of {:?}", field, fields);
                    }
                } else {
                    prop_assert_eq!(mask_fields, fields.len(), "{:?}", fields);
                }
            }
            Err(DealError::TotalUnitsBelowSold { sold }) => {
                prop_assert_eq!(sold, current.reserved_units());
                prop_assert!(mask.iter().any(|path| path == "total_units"));
            }
            Err(DealError::StartTimeLocked) => {
                prop_assert!(current.state != DealState::Scheduled);
                prop_assert!(mask.iter().any(|path| path == "start_time"));
            }
            Err(DealError::DealExpired) => prop_assert_eq!(current.state, DealState::Expired),
            Err(other) => prop_assert!(false, "unexpected {:?}", other),
        }
    }
}

/// The generators must reach every outcome of `update_deal`.
#[test]
fn the_update_generators_reach_every_outcome() {
    let mut runner = TestRunner::deterministic();
    let strategy = (now_strategy().prop_flat_map(|now| (Just(now), stored_deal(now))), deal_input(), mask_strategy());
    let mut seen = [0usize; 5];
    for _ in 0..500 {
        let ((now, current), input, mask) = strategy.new_tree(&mut runner).unwrap().current();
        let index =
            match outcome(&update_deal(&current, &input.request(now, current.terms.start_time), &mask, now)).unwrap() {
                Outcome::Terms(_) => 0,
                Outcome::Invalid => 1,
                Outcome::Expired => 2,
                Outcome::StartTimeLocked => 3,
                Outcome::BelowSold => 4,
            };
        seen[index] += 1;
    }
    assert!(seen.iter().all(|count| *count > 0), "outcomes (ok, invalid, expired, locked, below sold): {seen:?}");
}
