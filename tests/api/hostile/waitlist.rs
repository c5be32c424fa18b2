//! Hostile waitlist requests: JoinWaitlist, GetWaitlistEntry, LeaveWaitlist, ListWaitlistEntries,
//! the claims of offers through ReserveUnits and CreateOrder, and deals' offer windows.

use super::{Expect::*, *};

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn hostile_waitlist_requests_are_refused_and_write_nothing(pool: PgPool) {
    let (scene, fixtures) = Scene::new(pool).await;
    let call = &scene.call;
    let Fixtures { live, scheduled, expired, unknown_deal, huge, .. } = fixtures;
    let fresh = || Uuid::new_v4().to_string();
    let join = |deal: &str, quantity, request_id: &str| dealpb::JoinWaitlistRequest {
        deal: deal.into(),
        quantity,
        request_id: request_id.into(),
    };
    let unknown_entry = format!("{}/waitlistEntries/{}", live.name, fresh());
    let entry_of_unknown_deal = format!("{unknown_deal}/waitlistEntries/{}", fresh());
    let bad_entry_names = ["", "deals/x/waitlistEntries/y", live.name.as_str(), "waitlistEntries/1"];
    let list = |parent: &str, page_size, page_token: &str| dealpb::ListWaitlistEntriesRequest {
        parent: parent.into(),
        page_size,
        page_token: page_token.into(),
    };
    let claim = |entry: &str, customer_id: &str| holdspb::ReserveUnitsRequest {
        timeout: None,
        deal: live.name.clone(),
        reservation_id: fresh(),
        quantity: 1,
        expected_unit_price: None,
        customer_id: customer_id.into(),
        waitlist_entry: entry.into(),
    };
    let seconds = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
    let with_offer_window = |offer_window| dealpb::Deal { offer_window, ..deal_request(5) };
    let live_patch = |deal: dealpb::Deal| Some(dealpb::Deal { name: live.name.clone(), ..deal });

    let mut cases = vec![
        // JoinWaitlist.
        case("JoinWaitlist malformed deal", call.join(join("deals/x", 7, "")), Invalid(&["deal"])),
        case("JoinWaitlist no deal", call.join(join("", 7, "")), Invalid(&["deal"])),
        case("JoinWaitlist zero units", call.join(join(&live.name, 0, "")), Invalid(&["quantity"])),
        case("JoinWaitlist 101 units", call.join(join(&live.name, 101, "")), Invalid(&["quantity"])),
        case("JoinWaitlist i32::MIN units", call.join(join(&live.name, i32::MIN, "")), Invalid(&["quantity"])),
        case("JoinWaitlist bad request id", call.join(join(&live.name, 7, "retry-1")), Invalid(&["request_id"])),
        case(
            "JoinWaitlist everything wrong",
            call.join(join("orders/1", -1, "x")),
            Invalid(&["deal", "quantity", "request_id"]),
        ),
        case("JoinWaitlist 100 KB deal name", call.join(join(&huge, 7, "")), CodeOnly(Code::OutOfRange)),
        case(
            "JoinWaitlist unknown deal",
            call.join(join(&unknown_deal, 7, "")),
            Refused(Code::NotFound, "DEAL_NOT_FOUND"),
        ),
        case(
            "JoinWaitlist with enough units left",
            call.join(join(&live.name, 6, &fresh())),
            Refused(Code::FailedPrecondition, "UNITS_AVAILABLE"),
        ),
        case(
            "JoinWaitlist a scheduled deal",
            call.join(join(&scheduled, 100, "")),
            Refused(Code::FailedPrecondition, "DEAL_NOT_STARTED"),
        ),
        case(
            "JoinWaitlist an expired deal",
            call.join(join(&expired, 100, "")),
            Refused(Code::FailedPrecondition, "DEAL_EXPIRED"),
        ),
        case(
            "JoinWaitlist as an admin",
            call.join_as_admin(join(&live.name, 7, "")),
            Refused(Code::PermissionDenied, "PERMISSION_DENIED"),
        ),
        // GetWaitlistEntry and LeaveWaitlist.
        case(
            "GetWaitlistEntry unknown",
            call.get_entry(&unknown_entry),
            Refused(Code::NotFound, "WAITLIST_ENTRY_NOT_FOUND"),
        ),
        case(
            "GetWaitlistEntry of an unknown deal",
            call.get_entry(&entry_of_unknown_deal),
            Refused(Code::NotFound, "WAITLIST_ENTRY_NOT_FOUND"),
        ),
        case("LeaveWaitlist unknown", call.leave(&unknown_entry), Refused(Code::NotFound, "WAITLIST_ENTRY_NOT_FOUND")),
        case(
            "LeaveWaitlist of an unknown deal",
            call.leave(&entry_of_unknown_deal),
            Refused(Code::NotFound, "WAITLIST_ENTRY_NOT_FOUND"),
        ),
        case(
            "LeaveWaitlist as an admin",
            call.leave_as_admin(&unknown_entry),
            Refused(Code::PermissionDenied, "PERMISSION_DENIED"),
        ),
        // ListWaitlistEntries.
        case("ListWaitlistEntries malformed parent", call.list_entries(list("deals/x", 0, "")), Invalid(&["parent"])),
        case(
            "ListWaitlistEntries negative page size",
            call.list_entries(list(&live.name, -1, "")),
            Invalid(&["page_size"]),
        ),
        case(
            "ListWaitlistEntries forged token",
            call.list_entries(list(&live.name, 0, &hex_token("v1|0|nope|x"))),
            Invalid(&["page_token"]),
        ),
        case(
            "ListWaitlistEntries everything wrong",
            call.list_entries(list("", -5, "zz")),
            Invalid(&["parent", "page_size", "page_token"]),
        ),
        case(
            "ListWaitlistEntries unknown deal",
            call.list_entries(list(&unknown_deal, 0, "")),
            Refused(Code::NotFound, "DEAL_NOT_FOUND"),
        ),
        // Claims through ReserveUnits (order-service's role) and CreateOrder.
        case(
            "ReserveUnits claim of a malformed entry",
            call.reserve(claim("deals/x/waitlistEntries/y", "alice")),
            Invalid(&["waitlist_entry"]),
        ),
        case(
            "ReserveUnits claim of another deal's entry",
            call.reserve(claim(&entry_of_unknown_deal, "alice")),
            Invalid(&["waitlist_entry"]),
        ),
        case("ReserveUnits claim for no customer", call.reserve(claim(&unknown_entry, "")), Invalid(&["customer_id"])),
        case(
            "ReserveUnits claim of an unknown entry",
            call.reserve(claim(&unknown_entry, "alice")),
            Refused(Code::NotFound, "WAITLIST_ENTRY_NOT_FOUND"),
        ),
        case(
            "CreateOrder claim of a malformed entry",
            call.create_order_claiming(order_request(&live.name, 1), "deals/1/waitlistEntries"),
            Invalid(&["waitlist_entry"]),
        ),
        case(
            "CreateOrder claim of another deal's entry",
            call.create_order_claiming(order_request(&live.name, 1), &entry_of_unknown_deal),
            Invalid(&["waitlist_entry"]),
        ),
        case(
            "CreateOrder claim of an unknown entry",
            call.create_order_claiming(order_request(&live.name, 1), &unknown_entry),
            Refused(Code::NotFound, "WAITLIST_ENTRY_NOT_FOUND"),
        ),
        // Offer windows.
        case(
            "CreateDeal offer window of 59 s",
            call.create_deal(Some(with_offer_window(seconds(59, 0)))),
            Invalid(&["deal.offer_window"]),
        ),
        case(
            "CreateDeal offer window of an hour and a second",
            call.create_deal(Some(with_offer_window(seconds(3_601, 0)))),
            Invalid(&["deal.offer_window"]),
        ),
        case(
            "CreateDeal offer window with nanoseconds",
            call.create_deal(Some(with_offer_window(seconds(120, 1)))),
            Invalid(&["deal.offer_window"]),
        ),
        case(
            "CreateDeal offer window of i64::MIN s",
            call.create_deal(Some(with_offer_window(seconds(i64::MIN, 0)))),
            Invalid(&["deal.offer_window"]),
        ),
        case(
            "UpdateDeal offer window of -60 s",
            call.update_deal(
                live_patch(dealpb::Deal { offer_window: seconds(-60, 0), ..Default::default() }),
                mask(&["offer_window"]),
            ),
            Invalid(&["deal.offer_window"]),
        ),
    ];
    for name in bad_entry_names {
        cases.push(case(format!("GetWaitlistEntry named {name:?}"), call.get_entry(name), Invalid(&["name"])));
        cases.push(case(format!("LeaveWaitlist named {name:?}"), call.leave(name), Invalid(&["name"])));
    }
    scene.refuse_all(cases, 40).await;
}
