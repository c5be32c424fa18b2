#!/usr/bin/env python3
"""A real Python client of deal-service and order-service, with code generated from proto/ at run time.

It walks the README's flow (an admin creates a deal; a customer watches it, lists deals, orders two
units with a request_id and sees the change on the watch, retries, tracks the order; the admin
approves it), then reads the error details of refused
calls: the google.rpc.Status in the `grpc-status-details-bin` trailer, its ErrorInfo and BadRequest.

Environment: DEAL_ADDR and ORDER_ADDR (host:port, plain text), ADMIN_TOKEN and CUSTOMER_TOKEN (JWTs).
Prints `python client: N passed, M failed` last and exits 1 when anything failed.
"""

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import grpc_tools
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

REPO = Path(__file__).resolve().parents[3]
PROTOS = ["topkart/deal/v1/deal.proto", "topkart/order/v1/order.proto", "google/type/money.proto"]
DEADLINE_SECS = 10

passed = 0
failures = []


def check(condition, what):
    """Records one check; a failed one is printed at once and fails the run at the end."""
    global passed
    if condition:
        passed += 1
    else:
        failures.append(what)
        print(f"FAIL: {what}", file=sys.stderr)


def generate_code(out_dir):
    """Generates the messages and stubs of proto/ into out_dir and puts it first on sys.path.

    google/type/money_pb2 is generated too: `google` and `google.type` are namespace packages, so with
    out_dir first ours is the one imported, not the copy googleapis-common-protos installs.
    """
    well_known = Path(grpc_tools.__file__).parent / "_proto"  # timestamp.proto, field_mask.proto
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{REPO / 'proto'}", f"-I{well_known}",
         f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *PROTOS],
        check=True,
    )
    sys.path.insert(0, str(out_dir))


def timestamp_in(seconds):
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    stamp.seconds += seconds
    return stamp


def bearer(token):
    return (("authorization", f"Bearer {token}"),)


def refusal(call):
    """Makes a call that must fail; returns (code, Status, ErrorInfo, BadRequest) of its error.

    The details are the google.rpc.Status serialized in the `grpc-status-details-bin` trailer; its
    `details` are Any messages, unpacked by type. Absent parts are None.
    """
    try:
        call()
    except grpc.RpcError as err:
        status = info = bad_request = None
        for key, value in err.trailing_metadata() or ():
            if key == "grpc-status-details-bin":
                status = status_pb2.Status.FromString(value)
        for detail in status.details if status else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
        return err.code(), status, info, bad_request
    raise AssertionError("the call succeeded but should have been refused")


def check_refusal(label, call, code, reason):
    """Checks that `call` fails with `code`, a Status of the same code and an ErrorInfo of `reason`."""
    got_code, status, info, bad_request = refusal(call)
    check(got_code == code, f"{label}: code {got_code}, expected {code}")
    check(status is not None and status.code == code.value[0],
          f"{label}: grpc-status-details-bin holds a google.rpc.Status of code {code.value[0]}: {status}")
    check(info is not None and info.reason == reason, f"{label}: ErrorInfo reason {reason} expected, got {info}")
    return info, bad_request


def find_listed_deal(deals, customer, name):
    """Pages through ListDeals (the live deals) as the customer until it finds `name`."""
    page_token = ""
    while True:
        page = deals.ListDeals(deal_pb2.ListDealsRequest(page_size=100, page_token=page_token),
                               metadata=bearer(customer), timeout=DEADLINE_SECS)
        for deal in page.deals:
            if deal.name == name:
                return deal
        if not page.next_page_token:
            return None
        page_token = page.next_page_token


def run(deal_addr, order_addr, admin, customer):
    def inr(units, nanos=0):
        return money_pb2.Money(currency_code="INR", units=units, nanos=nanos)

    deals = deal_pb2_grpc.DealServiceStub(grpc.insecure_channel(deal_addr))
    orders = order_pb2_grpc.OrderServiceStub(grpc.insecure_channel(order_addr))

    def create_deal(name, total_units, expires_in_secs):
        deal = deal_pb2.Deal(product_name=name, actual_price=inr(9999), final_price=inr(4999, 500_000_000),
                             total_units=total_units, expire_time=timestamp_in(expires_in_secs))
        return deals.CreateDeal(deal_pb2.CreateDealRequest(deal=deal), metadata=bearer(admin), timeout=DEADLINE_SECS)

    def create_order(deal, quantity, request_id="", unit_price=None):
        order = order_pb2.Order(deal=deal, quantity=quantity, unit_price=unit_price)
        return orders.CreateOrder(order_pb2.CreateOrderRequest(order=order, request_id=request_id),
                                  metadata=bearer(customer), timeout=DEADLINE_SECS)

    # An admin creates a deal of 5 units that runs for two hours.
    deal = create_deal("Noise-cancelling headphones (python client)", 5, 2 * 3600)
    check(deal.name.startswith("deals/"), f"CreateDeal names the deal deals/...: {deal.name!r}")
    check(deal.state == deal_pb2.Deal.ACTIVE, f"the new deal is ACTIVE: {deal_pb2.Deal.State.Name(deal.state)}")
    check(deal.available_units == 5, f"the new deal has 5 units available: {deal.available_units}")

    # The customer watches it: the deal as it is first, then every change (read below).
    watch = deals.WatchDeal(deal_pb2.WatchDealRequest(name=deal.name), metadata=bearer(customer),
                            timeout=DEADLINE_SECS)
    first = next(watch)
    check(first.name == deal.name and first.state == deal_pb2.Deal.ACTIVE and first.available_units == 5
          and first.claimed_percent == 0, f"WatchDeal first sends the deal as it is, 5 units, 0 %: {first}")

    # The customer finds it among the live deals and orders two units at the price shown.
    listed = find_listed_deal(deals, customer, deal.name)
    check(listed is not None, f"ListDeals shows the customer {deal.name}")
    unit_price = listed.final_price if listed else deal.final_price
    request_id = str(uuid.uuid4())
    order = create_order(deal.name, 2, request_id, unit_price)
    check(order.name == f"orders/{request_id}", f"the order's id is the request_id: {order.name!r}")
    check(order.state == order_pb2.Order.PENDING_APPROVAL,
          f"the order is PENDING_APPROVAL: {order_pb2.Order.State.Name(order.state)}")
    check(order.total_price == inr(9999), f"2 units at 4999.5 INR cost 9999 INR: {order.total_price}")
    changed = next(watch)
    check(changed.name == deal.name and changed.available_units == 3 and changed.claimed_percent == 40,
          f"the watcher sees the order's change, 3 units left, 40 % claimed: {changed}")
    watch.cancel()

    # A retry with the same request_id returns the same order and takes no more units.
    retried = create_order(deal.name, 2, request_id, unit_price)
    check(retried == order, f"the retry returns the first order: {retried} vs {order}")
    units_left = deals.GetDeal(deal_pb2.GetDealRequest(name=deal.name), metadata=bearer(customer),
                               timeout=DEADLINE_SECS).available_units
    check(units_left == 3, f"two orders of one request_id took 2 units, 3 left: {units_left}")

    # The customer tracks the order; the admin approves it.
    tracked = orders.GetOrder(order_pb2.GetOrderRequest(name=order.name), metadata=bearer(customer),
                              timeout=DEADLINE_SECS)
    check(tracked.name == order.name and tracked.state == order_pb2.Order.PENDING_APPROVAL,
          f"GetOrder shows the pending order: {tracked}")
    approved = orders.ApproveOrder(order_pb2.ApproveOrderRequest(name=order.name), metadata=bearer(admin),
                                   timeout=DEADLINE_SECS)
    check(approved.state == order_pb2.Order.APPROVED,
          f"ApproveOrder approves it: {order_pb2.Order.State.Name(approved.state)}")

    # More units than are left: FAILED_PRECONDITION, INSUFFICIENT_UNITS, and how many are left.
    info, _ = check_refusal("ordering 4 of 3 units left", lambda: create_order(deal.name, 4),
                            grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_UNITS")
    check(info is not None and info.metadata.get("available_units") == "3",
          f"INSUFFICIENT_UNITS says 3 units are available: {info}")

    # A deal past its expiry cannot be ordered, even before the expiry worker marks it expired.
    expiring = create_deal("Smart watch (python client)", 10, 2)
    time.sleep(3)
    check_refusal("ordering an expired deal", lambda: create_order(expiring.name, 1),
                  grpc.StatusCode.FAILED_PRECONDITION, "DEAL_EXPIRED")

    # Bad input: INVALID_ARGUMENT with a BadRequest that names the bad field.
    _, bad_request = check_refusal("creating a deal of 0 units", lambda: create_deal("Empty (python client)", 0, 3600),
                                   grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    fields = [violation.field for violation in bad_request.field_violations] if bad_request else []
    check(fields == ["deal.total_units"], f"the BadRequest names deal.total_units alone: {fields}")


def main():
    env = {name: os.environ.get(name) for name in ("DEAL_ADDR", "ORDER_ADDR", "ADMIN_TOKEN", "CUSTOMER_TOKEN")}
    missing = [name for name, value in env.items() if not value]
    if missing:
        sys.exit(f"python client: set {', '.join(missing)}")
    with tempfile.TemporaryDirectory(prefix="topkart-python-client-") as out_dir:
        generate_code(out_dir)
        # The generated modules exist only now; run() and its helpers use them as globals.
        global deal_pb2, deal_pb2_grpc, order_pb2, order_pb2_grpc, money_pb2
        from google.type import money_pb2
        from topkart.deal.v1 import deal_pb2, deal_pb2_grpc
        from topkart.order.v1 import order_pb2, order_pb2_grpc
        try:
            run(env["DEAL_ADDR"], env["ORDER_ADDR"], env["ADMIN_TOKEN"], env["CUSTOMER_TOKEN"])
        except (grpc.RpcError, AssertionError) as err:
            check(False, f"unexpected error, the flow stopped: {err}")
    print(f"python client: {passed} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
