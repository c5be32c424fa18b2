"""The part of scripts/check-monitoring that reads the rules and the dashboard and asks a real
Prometheus to evaluate every expression (see that script for how it is called)."""
import glob
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

TARGETS, SCRAPE_SECONDS = sys.argv[1], float(sys.argv[2])
RULE_FILES = sorted(glob.glob("deploy/prometheus/rules/*.yml"))
TEST_FILES = sorted(glob.glob("deploy/prometheus/tests/*.yml"))
DASHBOARDS = sorted(glob.glob("deploy/grafana/dashboards/*.json"))
RUNBOOK = "docs/monitoring.md"
JOBS = {"deal": "deal-service", "order": "order-service", "worker": "expiry-worker"}
SEVERITIES = {"critical", "warning"}
DATASOURCE_UID = "prometheus"

errors, warnings = [], []


def error(message):
    errors.append(message)
    print(f"ERROR {message}", file=sys.stderr)


# --- the rules and their tests ------------------------------------------------------------------

def anchors(markdown_path):
    """The anchors GitHub gives the headings of a Markdown file."""
    found = set()
    with open(markdown_path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
            if m:
                slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
                found.add(slug)
    return found


rule_exprs = []  # (where, expr)
alerts = {}
doc_anchors = anchors(RUNBOOK) if os.path.exists(RUNBOOK) else set()
if not doc_anchors:
    error(f"{RUNBOOK} is missing or has no headings for the runbooks")
for path in RULE_FILES:
    with open(path, encoding="utf-8") as f:
        for group in yaml.safe_load(f)["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                rule_exprs.append((f"{path}: {name}", rule["expr"]))
                if "alert" not in rule:
                    continue
                alerts[name] = path
                where = f"{path}: alert {name}"
                if "for" not in rule:
                    error(f"{where} has no `for`")
                if rule.get("labels", {}).get("severity") not in SEVERITIES:
                    error(f"{where}: severity must be one of {sorted(SEVERITIES)}")
                notes = rule.get("annotations", {})
                for key in ("summary", "description"):
                    if not notes.get(key):
                        error(f"{where} has no {key}")
                m = re.fullmatch(re.escape(RUNBOOK) + r"#([\w-]+)", notes.get("runbook_url", ""))
                if not m:
                    error(f"{where}: runbook_url must be {RUNBOOK}#<section>")
                elif m.group(1) not in doc_anchors:
                    error(f"{where}: {RUNBOOK} has no section #{m.group(1)}")

fires, silent = set(), set()
for path in TEST_FILES:
    with open(path, encoding="utf-8") as f:
        for test in yaml.safe_load(f).get("tests", []):
            for case in test.get("alert_rule_test", []):
                name = case["alertname"]
                if name not in alerts:
                    error(f"{path}: test {test.get('name')!r} expects alert {name}, which no rule defines")
                (fires if case.get("exp_alerts") else silent).add(name)
for name in sorted(alerts):
    if name not in fires:
        error(f"alert {name} has no test in which it fires")
    if name not in silent:
        error(f"alert {name} has no test in which it stays silent")

# --- the dashboards -----------------------------------------------------------------------------

BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__interval_ms": "15000", "__range": "1h",
            "__range_s": "3600", "__range_ms": "3600000"}


def walk(node, path=()):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, path + (i,))


def variable_values(dashboard):
    """A value for each dashboard variable: the current one of a fixed list, or `.+` for a
    variable filled from a query (used in `=~` matchers)."""
    values = dict(BUILTINS)
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") in ("custom", "constant", "interval", "textbox"):
            current = var.get("current", {}).get("value")
            if isinstance(current, list):
                current = current[0] if current else None
            if current in (None, "", "$__all"):
                current = str(var.get("query", "")).split(",")[0].strip()
            values[var["name"]] = current
        else:
            values[var["name"]] = var.get("allValue") or ".+"
    return values


def substitute(expr, values):
    for name in sorted(values, key=len, reverse=True):
        value = values[name]
        expr = re.sub(r"\$\{" + re.escape(name) + r"(?::[^}]*)?\}", lambda _: value, expr)
        expr = expr.replace(f"[[{name}]]", value)
        expr = re.sub(r"\$" + re.escape(name) + r"\b", lambda _: value, expr)
    return expr


dashboard_exprs = []  # (where, expr)
for path in DASHBOARDS:
    with open(path, encoding="utf-8") as f:
        dashboard = json.load(f)
    if not dashboard.get("uid"):
        error(f"{path}: the dashboard has no uid (its URL would change at every load)")
    values = variable_values(dashboard)
    titles = {where: node["title"] for where, node in walk(dashboard) if "title" in node and "gridPos" in node}

    def place(where):
        panel = max((p for p in titles if where[: len(p)] == p), key=len, default=None)
        return f"panel {titles[panel]!r}" if panel is not None else "/".join(map(str, where)) or "top level"

    for where, node in walk(dashboard):
        if "datasource" in node:
            ds = node["datasource"]
            if not (isinstance(ds, dict) and ds.get("uid") == DATASOURCE_UID):
                error(f"{path}: {place(where)}: data source {ds!r} is not uid {DATASOURCE_UID!r}")
        if "expr" in node and "refId" in node:
            dashboard_exprs.append((f"{path}: {place(where)} query {node['refId']}", node["expr"], values))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        m = re.fullmatch(r"\s*(?:label_values\((.*),\s*\w+\s*\)|query_result\((.*)\))\s*", query, re.S)
        if m:
            dashboard_exprs.append((f"{path}: variable {var['name']}", m.group(1) or m.group(2), values))
        elif not re.fullmatch(r"\s*(label_values\(\s*\w+\s*\)|label_names\(\)|metrics\(.*\))\s*", query):
            error(f"{path}: variable {var['name']}: cannot read its query {query!r}")

exprs = list(rule_exprs)
for where, expr, values in dashboard_exprs:
    filled = substitute(expr, values)
    if "$" in filled:
        error(f"{where}: unknown variable in {expr!r}")
    exprs.append((where, filled))

# --- metric names against the services ----------------------------------------------------------

# Words of PromQL that read like metric names (aggregations are written `sum by (…) (…)`).
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
            "unless", "inf", "nan", "atan2", "start", "end", "sum", "min", "max", "avg", "group", "stddev",
            "stdvar", "count", "count_values", "bottomk", "topk", "quantile"}


def metric_names(expr):
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "{}", expr)
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1()", expr)
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(?!\w)(?!\s*\()", expr):
        if m.group(1).lower() not in KEYWORDS:
            yield m.group(1)


defined = set()
for path in glob.glob("services/**/*.rs", recursive=True):
    with open(path, encoding="utf-8") as f:
        defined.update(re.findall(r'"([a-z_][a-z0-9_]*)"', f.read()))
with open("Cargo.lock", encoding="utf-8") as f:
    process_metrics = 'name = "metrics-process"' in f.read()
for where, expr in exprs:
    for name in sorted(set(metric_names(expr))):
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        known = (name in ("up", "ALERTS", "ALERTS_FOR_STATE") or ":" in name or name in defined
                 or base in defined or (process_metrics and name.startswith("process_")))
        if not known:
            error(f"{where}: metric {name} is not defined by any service (no such string under services/)")

# --- a real Prometheus evaluates every expression -------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_targets(spec):
    jobs = {}
    for item in filter(None, spec.split(",")):
        key, _, address = item.partition("=")
        job = JOBS.get(key, key)
        if job not in JOBS.values() or not re.fullmatch(r"[\w.\-\[\]:]+:\d+", address):
            sys.exit(f"check-monitoring: --targets takes deal=HOST:PORT,order=HOST:PORT,worker=HOST:PORT, not {item!r}")
        jobs[job] = address
    return jobs


def api(base, path, **params):
    data = urllib.parse.urlencode(params).encode() if params else None
    try:
        with urllib.request.urlopen(base + path, data=data, timeout=30) as reply:
            return json.load(reply)
    except urllib.error.HTTPError as err:
        body = err.read()
        try:
            return json.loads(body)
        except ValueError:
            return {"status": "error", "error": f"HTTP {err.code}: {body[:200]!r}"}


def empty(result):
    data = result["data"]
    if data["resultType"] in ("scalar", "string"):
        return False
    values = [float(s["value"][1]) if "value" in s else float(s["values"][-1][1]) for s in data["result"]]
    return not values or all(math.isnan(v) for v in values)


jobs = parse_targets(TARGETS)
port = free_port()
base = f"http://127.0.0.1:{port}"
with tempfile.TemporaryDirectory(prefix="check-monitoring-") as tmp:
    scrape = [{"job_name": job, "static_configs": [{"targets": [address]}]} for job, address in jobs.items()]
    if not scrape:
        scrape = [{"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]
    config = {"global": {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "2s"},
              "rule_files": [os.path.abspath(p) for p in RULE_FILES], "scrape_configs": scrape}
    with open(f"{tmp}/prometheus.yml", "w") as f:
        yaml.safe_dump(config, f)
    log = open(f"{tmp}/prometheus.log", "w")
    server = subprocess.Popen(
        ["prometheus", f"--config.file={tmp}/prometheus.yml", f"--storage.tsdb.path={tmp}/data",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                with open(f"{tmp}/prometheus.log") as f:
                    sys.exit(f"check-monitoring: prometheus exited ({server.returncode}):\n{f.read()}")
            try:
                with urllib.request.urlopen(base + "/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                sys.exit("check-monitoring: prometheus did not become ready within 60 s")
            time.sleep(0.3)
        print(f"prometheus {subprocess.run(['prometheus', '--version'], capture_output=True, text=True).stdout.split()[2]}"
              f" on {base}, scraping {', '.join(f'{j} {a}' for j, a in jobs.items()) or 'itself'}")
        if jobs:
            print(f"scraping for {SCRAPE_SECONDS:g} s")
            time.sleep(SCRAPE_SECONDS)

        # Every rule evaluated at least once, without error.
        deadline = time.monotonic() + 30
        while True:
            groups = api(base, "/api/v1/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            if rules and not any(r.get("lastEvaluation", "0001").startswith("0001") for r in rules):
                break
            if time.monotonic() > deadline:
                error("prometheus did not evaluate every rule within 30 s")
                break
            time.sleep(0.5)
        for rule in rules:
            if rule.get("health") == "err":
                error(f"rule {rule['name']} fails on evaluation: {rule.get('lastError')}")
        if len(rules) != len(rule_exprs):
            error(f"prometheus loaded {len(rules)} rules, the rule files hold {len(rule_exprs)}")

        alert_exprs = {expr for where, expr in rule_exprs if where.split(": ")[-1] in alerts}
        evaluated = set()
        for where, expr in exprs:
            if expr in evaluated:
                continue
            evaluated.add(expr)
            result = api(base, "/api/v1/query", query=expr)
            if result.get("status") != "success":
                error(f"{where}: {result.get('errorType', '')} {result.get('error')}\n    {' '.join(expr.split())}")
                continue
            for warning in result.get("warnings", []):
                warnings.append(f"{where}: {warning}")
            # An alert's expression is empty while all is well.
            if jobs and expr not in alert_exprs and empty(result):
                warnings.append(f"no data: {where}")

        if jobs:
            exposed = set(api(base, "/api/v1/label/__name__/values")["data"])
            named = {name for _, expr in exprs for name in metric_names(expr) if ":" not in name}
            for name in sorted(named):
                if not {name, name + "_bucket"} & exposed:
                    warnings.append(f"no target exposes {name}")
            for target in api(base, "/api/v1/targets")["data"]["activeTargets"]:
                if target["health"] != "up":
                    error(f"target {target['labels']['job']} {target['scrapeUrl']} is {target['health']}: "
                          f"{target.get('lastError')}")
            active = api(base, "/api/v1/alerts")["data"]["alerts"]
            for alert in active:
                labels = {k: v for k, v in alert["labels"].items() if k not in ("alertname", "severity")}
                print(f"alert {alert['labels']['alertname']} is {alert['state']} {labels}")
            if not active:
                print("no alert pending or firing")
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()

for warning in warnings:
    print(f"WARN {warning}")
print(f"check-monitoring: {len(alerts)} alerts, {len(rule_exprs)} rules, {len(dashboard_exprs)} dashboard queries;"
      f" {len(evaluated)} distinct expressions evaluated, {len(errors)} errors, {len(warnings)} warnings")
sys.exit(1 if errors else 0)
