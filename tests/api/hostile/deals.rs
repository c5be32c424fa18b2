//! Hostile CreateDeal, UpdateDeal, GetDeal and ListDeals requests.

use super::{Expect::*, *};

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn hostile_deal_requests_are_refused_and_write_nothing(pool: PgPool) {
    let (scene, fixtures) = Scene::new(pool).await;
    let call = &scene.call;
    let Fixtures { live, live_id, scheduled, expired, unknown_deal, now, later, cursor, huge, .. } = fixtures;
    let deal = deal_request;
    let with_name = |name: &str| dealpb::Deal { product_name: name.into(), ..deal(5) };
    let patch = |name: &str| dealpb::Deal { name: name.into(), product_name: "Tablet".into(), ..Default::default() };
    let live_patch = |deal: dealpb::Deal| Some(dealpb::Deal { name: live.name.clone(), ..deal });
    let list_deals_token = |token: String| dealpb::ListDealsRequest { page_token: token, ..Default::default() };
    let cases = vec![
        // CreateDeal: prices.
        case("deal unset", call.create_deal(None), Invalid(&["deal"])),
        case(
            "zero actual price",
            call.create_deal(Some(dealpb::Deal { actual_price: Some(inr(0)), ..deal(5) })),
            Invalid(&["deal.actual_price"]),
        ),
        case(
            "zero final price",
            call.create_deal(Some(dealpb::Deal { final_price: Some(inr(0)), ..deal(5) })),
            Invalid(&["deal.final_price"]),
        ),
        case(
            "negative actual units",
            call.create_deal(Some(dealpb::Deal { actual_price: Some(inr(-1)), ..deal(5) })),
            Invalid(&["deal.actual_price.units"]),
        ),
        case(
            "i64::MAX actual units",
            call.create_deal(Some(dealpb::Deal { actual_price: Some(inr(i64::MAX)), ..deal(5) })),
            Invalid(&["deal.actual_price.units"]),
        ),
        case(
            "i64::MIN final units",
            call.create_deal(Some(dealpb::Deal { final_price: Some(inr(i64::MIN)), ..deal(5) })),
            Invalid(&["deal.final_price.units"]),
        ),
        case(
            "1e9 + 1 units",
            call.create_deal(Some(dealpb::Deal {
                actual_price: Some(inr(1_000_000_001)),
                final_price: Some(inr(1_000_000_001)),
                ..deal(5)
            })),
            Invalid(&["deal.actual_price.units", "deal.final_price.units"]),
        ),
        case(
            "negative nanos",
            call.create_deal(Some(dealpb::Deal { final_price: Some(money("INR", 600, -1_000)), ..deal(5) })),
            Invalid(&["deal.final_price.nanos"]),
        ),
        case(
            "zero units with negative nanos",
            call.create_deal(Some(dealpb::Deal { final_price: Some(money("INR", 0, -5_000)), ..deal(5) })),
            Invalid(&["deal.final_price.nanos"]),
        ),
        case(
            "nanos of a whole unit",
            call.create_deal(Some(dealpb::Deal { actual_price: Some(money("INR", 1000, 1_000_000_000)), ..deal(5) })),
            Invalid(&["deal.actual_price.nanos"]),
        ),
        case(
            "i32::MAX nanos",
            call.create_deal(Some(dealpb::Deal { actual_price: Some(money("INR", 1000, i32::MAX)), ..deal(5) })),
            Invalid(&["deal.actual_price.nanos"]),
        ),
        case(
            "i32::MIN nanos",
            call.create_deal(Some(dealpb::Deal { final_price: Some(money("INR", 600, i32::MIN)), ..deal(5) })),
            Invalid(&["deal.final_price.nanos"]),
        ),
        case(
            "sub-micro nanos",
            call.create_deal(Some(dealpb::Deal { final_price: Some(money("INR", 600, 1)), ..deal(5) })),
            Invalid(&["deal.final_price.nanos"]),
        ),
        case(
            "999_999_999 nanos",
            call.create_deal(Some(dealpb::Deal { final_price: Some(money("INR", 600, 999_999_999)), ..deal(5) })),
            Invalid(&["deal.final_price.nanos"]),
        ),
        case(
            "final price above actual",
            call.create_deal(Some(dealpb::Deal { final_price: Some(money("INR", 1000, 1_000)), ..deal(5) })),
            Invalid(&["deal.final_price"]),
        ),
        case(
            "currency mismatch",
            call.create_deal(Some(dealpb::Deal { final_price: Some(money("USD", 600, 0)), ..deal(5) })),
            Invalid(&["deal.final_price.currency_code"]),
        ),
        case(
            "lowercase currencies",
            call.create_deal(Some(dealpb::Deal {
                actual_price: Some(money("inr", 1000, 0)),
                final_price: Some(money("inr", 600, 0)),
                ..deal(5)
            })),
            Invalid(&["deal.actual_price.currency_code", "deal.final_price.currency_code"]),
        ),
        case(
            "4-letter currency",
            call.create_deal(Some(dealpb::Deal { actual_price: Some(money("INRR", 1000, 0)), ..deal(5) })),
            Invalid(&["deal.actual_price.currency_code"]),
        ),
        case(
            "empty currency",
            call.create_deal(Some(dealpb::Deal { final_price: Some(money("", 600, 0)), ..deal(5) })),
            Invalid(&["deal.final_price.currency_code"]),
        ),
        case(
            "Cyrillic homoglyph currency",
            call.create_deal(Some(dealpb::Deal {
                actual_price: Some(money("\u{0406}NR", 1000, 0)),
                final_price: Some(money("\u{0406}NR", 600, 0)),
                ..deal(5)
            })),
            Invalid(&["deal.actual_price.currency_code", "deal.final_price.currency_code"]),
        ),
        case(
            "every part of a price wrong",
            call.create_deal(Some(dealpb::Deal { actual_price: Some(money("inr", -1, 1)), ..deal(5) })),
            Invalid(&["deal.actual_price.currency_code", "deal.actual_price.nanos", "deal.actual_price.units"]),
        ),
        case(
            "actual price unset",
            call.create_deal(Some(dealpb::Deal { actual_price: None, ..deal(5) })),
            Invalid(&["deal.actual_price"]),
        ),
        // CreateDeal: units.
        case("zero units", call.create_deal(Some(deal(0))), Invalid(&["deal.total_units"])),
        case("negative units", call.create_deal(Some(deal(-1))), Invalid(&["deal.total_units"])),
        case("i32::MAX units", call.create_deal(Some(deal(i32::MAX))), Invalid(&["deal.total_units"])),
        case("i32::MIN units", call.create_deal(Some(deal(i32::MIN))), Invalid(&["deal.total_units"])),
        case("1e6 + 1 units", call.create_deal(Some(deal(1_000_001))), Invalid(&["deal.total_units"])),
        // CreateDeal: times.
        case(
            "expire_time unset",
            call.create_deal(Some(dealpb::Deal { expire_time: None, ..deal(5) })),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "expire_time in the past",
            call.create_deal(Some(dealpb::Deal { expire_time: at(now - TimeDelta::minutes(1)), ..deal(5) })),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "expire_time equal to start_time",
            call.create_deal(Some(dealpb::Deal { start_time: at(later), expire_time: at(later), ..deal(5) })),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "expire_time before start_time",
            call.create_deal(Some(dealpb::Deal {
                start_time: at(later),
                expire_time: at(later - TimeDelta::seconds(1)),
                ..deal(5)
            })),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "expire_time 12 h + 1 s after start_time",
            call.create_deal(Some(dealpb::Deal {
                start_time: at(later),
                expire_time: at(later + TimeDelta::hours(12) + TimeDelta::seconds(1)),
                ..deal(5)
            })),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "expire_time 12 h + 1 µs after start_time",
            call.create_deal(Some(dealpb::Deal {
                start_time: at(later),
                expire_time: at(later + TimeDelta::hours(12) + TimeDelta::microseconds(1)),
                ..deal(5)
            })),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "start_time an hour in the past",
            call.create_deal(Some(dealpb::Deal { start_time: at(now - TimeDelta::hours(1)), ..deal(5) })),
            Invalid(&["deal.start_time"]),
        ),
        case(
            "start_time in year 10000",
            call.create_deal(Some(dealpb::Deal {
                start_time: Some(Timestamp { seconds: 253_402_300_800, nanos: 0 }),
                ..deal(5)
            })),
            Invalid(&["deal.start_time"]),
        ),
        case(
            "start_time before 1970",
            call.create_deal(Some(dealpb::Deal { start_time: Some(Timestamp { seconds: -1, nanos: 0 }), ..deal(5) })),
            Invalid(&["deal.start_time"]),
        ),
        case(
            "expire_time of i64::MAX seconds",
            call.create_deal(Some(dealpb::Deal {
                expire_time: Some(Timestamp { seconds: i64::MAX, nanos: 0 }),
                ..deal(5)
            })),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "expire_time of i64::MIN seconds",
            call.create_deal(Some(dealpb::Deal {
                expire_time: Some(Timestamp { seconds: i64::MIN, nanos: 0 }),
                ..deal(5)
            })),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "expire_time with negative nanos",
            call.create_deal(Some(dealpb::Deal {
                expire_time: Some(Timestamp { seconds: (now + TimeDelta::hours(1)).timestamp(), nanos: -1 }),
                ..deal(5)
            })),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "expire_time with a whole second of nanos",
            call.create_deal(Some(dealpb::Deal {
                expire_time: Some(Timestamp { seconds: (now + TimeDelta::hours(1)).timestamp(), nanos: 1_000_000_000 }),
                ..deal(5)
            })),
            Invalid(&["deal.expire_time"]),
        ),
        // CreateDeal: product names.
        case("empty product name", call.create_deal(Some(with_name(""))), Invalid(&["deal.product_name"])),
        case(
            "whitespace-only product name",
            call.create_deal(Some(with_name(" \t\r\n\u{a0}\u{3000}\u{85} "))),
            Invalid(&["deal.product_name"]),
        ),
        case(
            "10 KB product name",
            call.create_deal(Some(with_name(&"n".repeat(10 * 1024)))),
            Invalid(&["deal.product_name"]),
        ),
        case("NUL in the product name", call.create_deal(Some(with_name("Pho\0ne"))), Invalid(&["deal.product_name"])),
        case(
            "newline in the product name",
            call.create_deal(Some(with_name("Pho\nne"))),
            Invalid(&["deal.product_name"]),
        ),
        case(
            "DEL in the product name",
            call.create_deal(Some(with_name("Pho\u{7f}ne"))),
            Invalid(&["deal.product_name"]),
        ),
        case(
            "U+0085 inside the product name",
            call.create_deal(Some(with_name("Pho\u{85}ne"))),
            Invalid(&["deal.product_name"]),
        ),
        case(
            "ESC sequence in the product name",
            call.create_deal(Some(with_name("\u{1b}[31mPhone"))),
            Invalid(&["deal.product_name"]),
        ),
        case(
            "a product name of zero-width characters only",
            call.create_deal(Some(with_name("\u{200B}\u{200C}\u{200D}\u{FEFF}"))),
            Invalid(&["deal.product_name"]),
        ),
        case(
            "a product name of fillers, tags and variation selectors",
            call.create_deal(Some(with_name(" \u{3164}\u{FFA0}\u{115F}\u{E0041}\u{FE0F}\u{2060}\u{00AD} "))),
            Invalid(&["deal.product_name"]),
        ),
        case(
            "an approval window of 59 s",
            call.create_deal(Some(dealpb::Deal {
                approval_window: Some(prost_types::Duration { seconds: 59, nanos: 0 }),
                ..deal(5)
            })),
            Invalid(&["deal.approval_window"]),
        ),
        case(
            "an approval window of 12 h 1 s",
            call.create_deal(Some(dealpb::Deal {
                approval_window: Some(prost_types::Duration { seconds: 43_201, nanos: 0 }),
                ..deal(5)
            })),
            Invalid(&["deal.approval_window"]),
        ),
        case(
            "an approval window with nanoseconds",
            call.create_deal(Some(dealpb::Deal {
                approval_window: Some(prost_types::Duration { seconds: 600, nanos: 1 }),
                ..deal(5)
            })),
            Invalid(&["deal.approval_window"]),
        ),
        case(
            "an approval window of i64::MIN seconds",
            call.create_deal(Some(dealpb::Deal {
                approval_window: Some(prost_types::Duration { seconds: i64::MIN, nanos: -999_999_999 }),
                ..deal(5)
            })),
            Invalid(&["deal.approval_window"]),
        ),
        case(
            "a per-customer limit of 0",
            call.create_deal(Some(dealpb::Deal { max_units_per_customer: Some(0), ..deal(5) })),
            Invalid(&["deal.max_units_per_customer"]),
        ),
        case(
            "a negative per-customer limit",
            call.create_deal(Some(dealpb::Deal { max_units_per_customer: Some(i32::MIN), ..deal(5) })),
            Invalid(&["deal.max_units_per_customer"]),
        ),
        case(
            "a per-customer limit above 1,000,000",
            call.create_deal(Some(dealpb::Deal { max_units_per_customer: Some(1_000_001), ..deal(5) })),
            Invalid(&["deal.max_units_per_customer"]),
        ),
        case(
            "201 two-byte characters",
            call.create_deal(Some(with_name(&"é".repeat(201)))),
            Invalid(&["deal.product_name"]),
        ),
        case(
            "201 four-byte characters",
            call.create_deal(Some(with_name(&"😀".repeat(201)))),
            Invalid(&["deal.product_name"]),
        ),
        case(
            "everything wrong at once",
            call.create_deal(Some(dealpb::Deal {
                product_name: "   ".into(),
                actual_price: Some(money("inr", 1000, 0)),
                final_price: None,
                total_units: 0,
                expire_time: None,
                ..Default::default()
            })),
            Invalid(&[
                "deal.product_name",
                "deal.actual_price.currency_code",
                "deal.final_price",
                "deal.total_units",
                "deal.expire_time",
            ]),
        ),
        case(
            "CreateDeal by a customer",
            call.create_deal_as_customer(deal(5)),
            Refused(Code::PermissionDenied, "PERMISSION_DENIED"),
        ),
        // Above the 64 KiB limit: tonic refuses the message before any handler runs.
        case("100 KB product name", call.create_deal(Some(with_name(&huge))), CodeOnly(Code::OutOfRange)),
        // UpdateDeal: masks.
        case(
            "mask naming an unknown field",
            call.update_deal(Some(patch(&live.name)), mask(&["colour"])),
            Invalid(&["update_mask.paths[0]"]),
        ),
        case(
            "mask naming available_units",
            call.update_deal(Some(patch(&live.name)), mask(&["available_units"])),
            Invalid(&["update_mask.paths[0]"]),
        ),
        case(
            "mask naming state",
            call.update_deal(Some(patch(&live.name)), mask(&["state"])),
            Invalid(&["update_mask.paths[0]"]),
        ),
        case(
            "mask naming name",
            call.update_deal(Some(patch(&live.name)), mask(&["name"])),
            Invalid(&["update_mask.paths[0]"]),
        ),
        case(
            "mask naming create_time",
            call.update_deal(Some(patch(&live.name)), mask(&["create_time"])),
            Invalid(&["update_mask.paths[0]"]),
        ),
        case("mask of *", call.update_deal(Some(patch(&live.name)), mask(&["*"])), Invalid(&["update_mask.paths[0]"])),
        case(
            "mask naming a field twice",
            call.update_deal(Some(patch(&live.name)), mask(&["product_name", "product_name"])),
            Invalid(&["update_mask.paths[1]"]),
        ),
        case(
            "mask naming a sub-field",
            call.update_deal(Some(patch(&live.name)), mask(&["actual_price.units"])),
            Invalid(&["update_mask.paths[0]"]),
        ),
        case(
            "mask in another case",
            call.update_deal(Some(patch(&live.name)), mask(&["Product_Name"])),
            Invalid(&["update_mask.paths[0]"]),
        ),
        case(
            "mask of an empty path",
            call.update_deal(Some(patch(&live.name)), mask(&[""])),
            Invalid(&["update_mask.paths[0]"]),
        ),
        case(
            "mask mixing good and bad paths",
            call.update_deal(
                Some(patch(&live.name)),
                mask(&["product_name", "available_units", "state", "update_time", "*", "total_units", "total_units"]),
            ),
            Invalid(&[
                "update_mask.paths[1]",
                "update_mask.paths[2]",
                "update_mask.paths[3]",
                "update_mask.paths[4]",
                "update_mask.paths[6]",
            ]),
        ),
        case("empty mask", call.update_deal(Some(patch(&live.name)), mask(&[])), Invalid(&["update_mask"])),
        case("mask unset", call.update_deal(Some(patch(&live.name)), None), Invalid(&["update_mask"])),
        // UpdateDeal: values.
        case(
            "update to zero units",
            call.update_deal(live_patch(dealpb::Deal { total_units: 0, ..Default::default() }), mask(&["total_units"])),
            Invalid(&["deal.total_units"]),
        ),
        case(
            "update to i32::MAX units",
            call.update_deal(
                live_patch(dealpb::Deal { total_units: i32::MAX, ..Default::default() }),
                mask(&["total_units"]),
            ),
            Invalid(&["deal.total_units"]),
        ),
        case(
            "update below the units sold",
            call.update_deal(live_patch(dealpb::Deal { total_units: 3, ..Default::default() }), mask(&["total_units"])),
            Refused(Code::FailedPrecondition, "TOTAL_UNITS_BELOW_SOLD"),
        ),
        case(
            "update masking actual_price but leaving it unset",
            call.update_deal(live_patch(dealpb::Deal::default()), mask(&["actual_price"])),
            Invalid(&["deal.actual_price"]),
        ),
        case(
            "update masking expire_time but leaving it unset",
            call.update_deal(live_patch(dealpb::Deal::default()), mask(&["expire_time"])),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "update to a final price above actual",
            call.update_deal(
                live_patch(dealpb::Deal { final_price: Some(inr(1001)), ..Default::default() }),
                mask(&["final_price"]),
            ),
            Invalid(&["deal.final_price"]),
        ),
        case(
            "update actual_price to another currency",
            call.update_deal(
                live_patch(dealpb::Deal { actual_price: Some(money("USD", 1000, 0)), ..Default::default() }),
                mask(&["actual_price"]),
            ),
            Invalid(&["deal.final_price.currency_code"]),
        ),
        case(
            "update to a blank name and negative units",
            call.update_deal(
                live_patch(dealpb::Deal { product_name: "\t".into(), total_units: -1, ..Default::default() }),
                mask(&["product_name", "total_units"]),
            ),
            Invalid(&["deal.product_name", "deal.total_units"]),
        ),
        case(
            "update to an approval window of 0 s",
            call.update_deal(
                live_patch(dealpb::Deal {
                    approval_window: Some(prost_types::Duration { seconds: 0, nanos: 0 }),
                    ..Default::default()
                }),
                mask(&["approval_window"]),
            ),
            Invalid(&["deal.approval_window"]),
        ),
        case(
            "update to a per-customer limit of -1",
            call.update_deal(
                live_patch(dealpb::Deal { max_units_per_customer: Some(-1), ..Default::default() }),
                mask(&["max_units_per_customer"]),
            ),
            Invalid(&["deal.max_units_per_customer"]),
        ),
        case(
            "update to a name nobody can see",
            call.update_deal(
                live_patch(dealpb::Deal { product_name: "\u{2063}\u{200B}".into(), ..Default::default() }),
                mask(&["product_name"]),
            ),
            Invalid(&["deal.product_name"]),
        ),
        case(
            "update to a NUL in the name",
            call.update_deal(
                live_patch(dealpb::Deal { product_name: "a\0b".into(), ..Default::default() }),
                mask(&["product_name"]),
            ),
            Invalid(&["deal.product_name"]),
        ),
        case(
            "update expire_time into the past",
            call.update_deal(
                live_patch(dealpb::Deal { expire_time: at(now - TimeDelta::minutes(1)), ..Default::default() }),
                mask(&["expire_time"]),
            ),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "update expire_time to 12 h + 1 s after the start",
            call.update_deal(
                live_patch(dealpb::Deal {
                    expire_time: live
                        .start_time
                        .map(|start| Timestamp { seconds: start.seconds + 12 * 3600 + 1, ..start }),
                    ..Default::default()
                }),
                mask(&["expire_time"]),
            ),
            Invalid(&["deal.expire_time"]),
        ),
        case(
            "update moving the start of a live deal",
            call.update_deal(
                live_patch(dealpb::Deal { start_time: at(later), ..Default::default() }),
                mask(&["start_time"]),
            ),
            Refused(Code::FailedPrecondition, "START_TIME_LOCKED"),
        ),
        case(
            "update moving a scheduled deal's start into the past",
            call.update_deal(
                Some(dealpb::Deal {
                    name: scheduled.clone(),
                    start_time: at(now - TimeDelta::hours(1)),
                    ..Default::default()
                }),
                mask(&["start_time"]),
            ),
            Invalid(&["deal.start_time"]),
        ),
        case(
            "update of an expired deal",
            call.update_deal(Some(patch(&expired)), mask(&["product_name"])),
            Refused(Code::FailedPrecondition, "DEAL_EXPIRED"),
        ),
        // UpdateDeal: names.
        case("update with deal unset", call.update_deal(None, mask(&["product_name"])), Invalid(&["deal.name"])),
        case(
            "update of deals/not-a-uuid",
            call.update_deal(Some(patch("deals/not-a-uuid")), mask(&["product_name"])),
            Invalid(&["deal.name"]),
        ),
        case(
            "update naming an order",
            call.update_deal(Some(patch(&format!("orders/{live_id}"))), mask(&["product_name"])),
            Invalid(&["deal.name"]),
        ),
        case(
            "update of an unknown deal",
            call.update_deal(Some(patch(&unknown_deal)), mask(&["product_name"])),
            Refused(Code::NotFound, "DEAL_NOT_FOUND"),
        ),
        case(
            "update of a malformed name with an empty mask",
            call.update_deal(Some(patch("deals/not-a-uuid")), mask(&[])),
            Invalid(&["deal.name", "update_mask"]),
        ),
        case(
            "update of an unknown deal with a mask of *",
            call.update_deal(Some(patch(&unknown_deal)), mask(&["*"])),
            Invalid(&["update_mask.paths[0]"]),
        ),
        // GetDeal: names.
        case("GetDeal deals/not-a-uuid", call.get_deal("deals/not-a-uuid"), Invalid(&["name"])),
        case("GetDeal deal/uuid", call.get_deal(format!("deal/{live_id}")), Invalid(&["name"])),
        case("GetDeal orders/uuid", call.get_deal(format!("orders/{live_id}")), Invalid(&["name"])),
        case("GetDeal bare uuid", call.get_deal(live_id.to_string()), Invalid(&["name"])),
        case("GetDeal empty", call.get_deal(""), Invalid(&["name"])),
        case("WatchDeal deals/not-a-uuid", call.watch_deal("deals/not-a-uuid"), Invalid(&["name"])),
        case("WatchDeal orders/uuid", call.watch_deal(format!("orders/{live_id}")), Invalid(&["name"])),
        case("WatchDeal empty", call.watch_deal(""), Invalid(&["name"])),
        case(
            "WatchDeal unknown deal",
            call.watch_deal(unknown_deal.clone()),
            Refused(Code::NotFound, "DEAL_NOT_FOUND"),
        ),
        case("GetDeal deals/", call.get_deal("deals/"), Invalid(&["name"])),
        case("GetDeal with a suffix", call.get_deal(format!("{}/units", live.name)), Invalid(&["name"])),
        case("GetDeal with a leading space", call.get_deal(format!(" {}", live.name)), Invalid(&["name"])),
        case("GetDeal in capitals", call.get_deal(format!("DEALS/{live_id}")), Invalid(&["name"])),
        case("GetDeal with NUL", call.get_deal(format!("deals/\0{live_id}")), Invalid(&["name"])),
        case("GetDeal 60 KB name", call.get_deal(format!("deals/{}", "0".repeat(60 * 1024))), Invalid(&["name"])),
        case("GetDeal unknown", call.get_deal(&unknown_deal), Refused(Code::NotFound, "DEAL_NOT_FOUND")),
        case(
            "GetDeal nil uuid",
            call.get_deal(format!("deals/{}", Uuid::nil())),
            Refused(Code::NotFound, "DEAL_NOT_FOUND"),
        ),
        case("GetDeal 100 KB name", call.get_deal(format!("deals/{huge}")), CodeOnly(Code::OutOfRange)),
        // ListDeals.
        case(
            "ListDeals state 42",
            call.list_deals(dealpb::ListDealsRequest { state: 42, ..Default::default() }),
            Invalid(&["state"]),
        ),
        case(
            "ListDeals state -1",
            call.admin_list_deals(dealpb::ListDealsRequest { state: -1, ..Default::default() }),
            Invalid(&["state"]),
        ),
        case(
            "ListDeals page_size -1",
            call.list_deals(dealpb::ListDealsRequest { page_size: -1, ..Default::default() }),
            Invalid(&["page_size"]),
        ),
        case(
            "ListDeals page_size i32::MIN",
            call.list_deals(dealpb::ListDealsRequest { page_size: i32::MIN, ..Default::default() }),
            Invalid(&["page_size"]),
        ),
        case(
            "ListDeals page_size i32::MAX is lowered to 100",
            call.list_deals(dealpb::ListDealsRequest { page_size: i32::MAX, ..Default::default() }),
            Succeeds,
        ),
        case(
            "ListDeals with everything wrong",
            call.admin_list_deals(dealpb::ListDealsRequest { page_size: -5, page_token: "zz".into(), state: 42 }),
            Invalid(&["page_size", "state", "page_token"]),
        ),
        case(
            "ListDeals random hex token",
            call.list_deals(list_deals_token("deadbeef".repeat(8))),
            Invalid(&["page_token"]),
        ),
        case("ListDeals non-hex token", call.list_deals(list_deals_token("zz".into())), Invalid(&["page_token"])),
        case("ListDeals non-ASCII token", call.list_deals(list_deals_token("éé".into())), Invalid(&["page_token"])),
        case("ListDeals odd-length token", call.list_deals(list_deals_token("abc".into())), Invalid(&["page_token"])),
        case(
            "ListDeals token of another filter",
            call.list_deals(list_deals_token(cursor.to_token("expired"))),
            Invalid(&["page_token"]),
        ),
        case(
            "ListDeals token of the live filter used for EXPIRED",
            call.admin_list_deals(dealpb::ListDealsRequest {
                page_token: cursor.to_token("live"),
                state: DealState::Expired.into(),
                ..Default::default()
            }),
            Invalid(&["page_token"]),
        ),
        case(
            "ListDeals token with a timestamp before 1970",
            call.list_deals(list_deals_token(hex_token(&format!("v1|-220000000000000000|{}|live", Uuid::new_v4())))),
            Invalid(&["page_token"]),
        ),
        case(
            "ListDeals token with a timestamp after 9999",
            call.list_deals(list_deals_token(hex_token(&format!("v1|253402300800000000|{}|live", Uuid::new_v4())))),
            Invalid(&["page_token"]),
        ),
        case(
            "ListDeals token with an i64-overflowing timestamp",
            call.list_deals(list_deals_token(hex_token(&format!("v1|99999999999999999999|{}|live", Uuid::new_v4())))),
            Invalid(&["page_token"]),
        ),
        case(
            "ListDeals token of another version",
            call.list_deals(list_deals_token(hex_token(&format!("v2|0|{}|live", Uuid::new_v4())))),
            Invalid(&["page_token"]),
        ),
        case(
            "ListDeals token with a bad id",
            call.list_deals(list_deals_token(hex_token("v1|0|not-a-uuid|live"))),
            Invalid(&["page_token"]),
        ),
        case(
            "ListDeals token above 512 characters",
            call.list_deals(list_deals_token(hex_token(&format!("v1|{}|{}|live", "0".repeat(300), Uuid::new_v4())))),
            Invalid(&["page_token"]),
        ),
        case(
            "ListDeals state filter by a customer",
            call.list_deals(dealpb::ListDealsRequest { state: DealState::Expired.into(), ..Default::default() }),
            Refused(Code::PermissionDenied, "PERMISSION_DENIED"),
        ),
    ];
    scene.refuse_all(cases, 122).await;
}
