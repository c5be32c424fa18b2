#!/usr/bin/env python3
"""Checks the output of README.md's grpcurl walk-through, as tests/clients/run records it.

Every grpcurl call in it was preceded by a marker line `### grpcurl <last argument>` (the method, or
`list`), so each reply is read as the reply of its step. Usage: check_walkthrough.py OUTPUT_FILE.
Prints `grpcurl walk-through: N passed, M failed` last and exits 1 when anything failed.
"""

import json
import sys

MARKER = "### grpcurl "

passed = 0
failures = []


def check(condition, what):
    global passed
    if condition:
        passed += 1
    else:
        failures.append(what)
        print(f"FAIL: {what}", file=sys.stderr)


def steps(output):
    """The (step, reply text) pairs of the output, in order."""
    found = []
    for line in output.splitlines():
        if line.startswith(MARKER):
            found.append([line[len(MARKER):], []])
        elif found:
            found[-1][1].append(line)
    return [(step, "\n".join(lines)) for step, lines in found]


def main(path):
    with open(path, encoding="utf-8") as file:
        recorded = steps(file.read())
    replies = {}  # method -> the replies of its calls, in order
    refusals = []
    for step, text in recorded:
        if step == "list":
            check("topkart.deal.v1.DealService" in text.split(), f"`grpcurl list` lists DealService: {text!r}")
            continue
        try:
            reply = json.loads(text)
        except json.JSONDecodeError:
            reply = None
        # Every call replies with a message, printed as JSON, except the one refusal checked below.
        if reply is None and step.endswith("/CreateOrder") and text.startswith("ERROR:"):
            refusals.append(text)
            continue
        check(reply is not None, f"{step} printed JSON: {text!r}")
        if reply is not None:
            replies.setdefault(step.rsplit("/", 1)[-1], []).append(reply)

    check(replies.get("Check") == [{"status": "SERVING"}], f"the health check says SERVING: {replies.get('Check')}")
    created, approved = replies.get("CreateOrder", []), replies.get("ApproveOrder", [])
    check(len(created) == 3 and len(approved) == 1 and approved[0]["name"] == created[0]["name"]
          and approved[0]["state"] == "APPROVED", f"alice's order reached APPROVED: {created} {approved}")
    # The waitlist: bob's order sold the small deal out, carol waited, bob cancelled, carol claimed.
    joined, entries = replies.get("JoinWaitlist", []), replies.get("GetWaitlistEntry", [])
    cancelled = replies.get("CancelOrder", [])
    check(len(joined) == 1 and joined[0]["state"] == "WAITING", f"carol joined the waitlist: {joined}")
    check(len(cancelled) == 1 and len(created) == 3 and cancelled[0]["name"] == created[1]["name"]
          and cancelled[0]["state"] == "CANCELLED", f"bob's order was cancelled: {cancelled}")
    check(len(entries) == 2 and entries[0]["state"] == "OFFERED" and entries[0].get("offeredUnits") == 1,
          f"bob's units were offered to carol: {entries}")
    check(len(entries) == 2 and len(created) == 3 and entries[1]["state"] == "CLAIMED"
          and entries[1].get("order") == created[2]["name"], f"carol's order claimed the offer: {entries}")
    check(len(refusals) == 1 and "Code: FailedPrecondition" in refusals[0] and "DEAL_EXPIRED" in refusals[0],
          f"ordering the expired deal was refused with FAILED_PRECONDITION and DEAL_EXPIRED: {refusals}")
    deals, listed = replies.get("CreateDeal", []), replies.get("ListDeals", [])
    expiring = deals[-1]["name"] if deals else None
    check(len(listed) == 2 and any(d["name"] == expiring and d["state"] == "EXPIRED" for d in listed[1].get("deals", [])),
          f"the admin's list of EXPIRED deals shows {expiring}")

    print(f"grpcurl walk-through: {passed} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main(sys.argv[1])
