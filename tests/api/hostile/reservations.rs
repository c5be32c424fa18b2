//! Hostile ReserveUnits, ConfirmUnits and ReleaseUnits requests.

use super::{Expect::*, *};

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn hostile_reservation_requests_are_refused_and_write_nothing(pool: PgPool) {
    let (scene, fixtures) = Scene::new(pool).await;
    let call = &scene.call;
    let Fixtures { live, alice_request_id, scheduled, expired, unknown_deal, .. } = fixtures;
    let reserve = |deal: &str, reservation_id: &str, quantity, expected_unit_price| holdspb::ReserveUnitsRequest {
        waitlist_entry: String::new(),
        deal: deal.into(),
        reservation_id: reservation_id.into(),
        quantity,
        expected_unit_price,
        customer_id: String::new(),
        timeout: None,
    };
    let fresh = || Uuid::new_v4().to_string();
    let cases = vec![
        // ReserveUnits (order-service's role).
        case(
            "ReserveUnits malformed deal",
            call.reserve(reserve("deals/not-a-uuid", &fresh(), 1, None)),
            Invalid(&["deal"]),
        ),
        case(
            "ReserveUnits bad reservation id",
            call.reserve(reserve(&live.name, "nope", 1, None)),
            Invalid(&["reservation_id"]),
        ),
        case(
            "ReserveUnits empty reservation id",
            call.reserve(reserve(&live.name, "", 1, None)),
            Invalid(&["reservation_id"]),
        ),
        case(
            "ReserveUnits customer id holding NUL",
            call.reserve(holdspb::ReserveUnitsRequest {
                customer_id: "al\0ice".into(),
                ..reserve(&live.name, &fresh(), 1, None)
            }),
            Invalid(&["customer_id"]),
        ),
        case(
            "ReserveUnits customer id of 129 characters",
            call.reserve(holdspb::ReserveUnitsRequest {
                customer_id: "c".repeat(129),
                ..reserve(&live.name, &fresh(), 1, None)
            }),
            Invalid(&["customer_id"]),
        ),
        case("ReserveUnits zero units", call.reserve(reserve(&live.name, &fresh(), 0, None)), Invalid(&["quantity"])),
        case("ReserveUnits 101 units", call.reserve(reserve(&live.name, &fresh(), 101, None)), Invalid(&["quantity"])),
        case(
            "ReserveUnits i32::MAX units",
            call.reserve(reserve(&live.name, &fresh(), i32::MAX, None)),
            Invalid(&["quantity"]),
        ),
        case(
            "ReserveUnits i32::MIN units",
            call.reserve(reserve(&live.name, &fresh(), i32::MIN, None)),
            Invalid(&["quantity"]),
        ),
        case(
            "ReserveUnits lowercase expected price",
            call.reserve(reserve(&live.name, &fresh(), 1, Some(money("inr", 600, 0)))),
            Invalid(&["expected_unit_price.currency_code"]),
        ),
        case(
            "ReserveUnits zero expected price",
            call.reserve(reserve(&live.name, &fresh(), 1, Some(inr(0)))),
            Invalid(&["expected_unit_price"]),
        ),
        case(
            "ReserveUnits everything wrong",
            call.reserve(reserve("orders/1", "", -1, Some(inr(i64::MAX)))),
            Invalid(&["deal", "reservation_id", "quantity", "expected_unit_price.units"]),
        ),
        case(
            "ReserveUnits unknown deal",
            call.reserve(reserve(&unknown_deal, &fresh(), 1, None)),
            Refused(Code::NotFound, "DEAL_NOT_FOUND"),
        ),
        case(
            "ReserveUnits expired deal",
            call.reserve(reserve(&expired, &fresh(), 1, None)),
            Refused(Code::FailedPrecondition, "DEAL_EXPIRED"),
        ),
        case(
            "ReserveUnits scheduled deal",
            call.reserve(reserve(&scheduled, &fresh(), 1, None)),
            Refused(Code::FailedPrecondition, "DEAL_NOT_STARTED"),
        ),
        case(
            "ReserveUnits at another price",
            call.reserve(reserve(&live.name, &fresh(), 1, Some(inr(1)))),
            Refused(Code::FailedPrecondition, "PRICE_CHANGED"),
        ),
        case(
            "ReserveUnits more than left",
            call.reserve(reserve(&live.name, &fresh(), 7, None)),
            Refused(Code::FailedPrecondition, "INSUFFICIENT_UNITS"),
        ),
        case(
            "ReserveUnits reusing alice's reservation id for more units",
            call.reserve(reserve(&live.name, &alice_request_id.to_string(), 5, None)),
            Refused(Code::AlreadyExists, "RESERVATION_ID_REUSED"),
        ),
        case(
            "ReserveUnits by an admin",
            call.reserve_as_admin(reserve(&live.name, &fresh(), 1, None)),
            Refused(Code::PermissionDenied, "PERMISSION_DENIED"),
        ),
        case("ReleaseUnits bad id", call.release("nope"), Invalid(&["reservation_id"])),
        case("ReleaseUnits empty id", call.release(""), Invalid(&["reservation_id"])),
        case("ReleaseUnits unknown id", call.release(fresh()), Refused(Code::NotFound, "RESERVATION_NOT_FOUND")),
        case("ConfirmUnits bad id", call.confirm("deals/x"), Invalid(&["reservation_id"])),
        case("ConfirmUnits unknown id", call.confirm(fresh()), Refused(Code::NotFound, "RESERVATION_NOT_FOUND")),
    ];
    scene.refuse_all(cases, 22).await;
}
