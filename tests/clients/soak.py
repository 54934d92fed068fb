"""Clients of `segments serve` at once, for a while: half over the
PostgreSQL protocol (psycopg 3), half over HTTP (the JSON API), each
running its queries in a loop. Prints one JSON document: requests, errors,
latencies (p50/p99, ms) by kind, and the SQL answers that were not one
snapshot whole.

Usage: soak.py HTTP_PORT PG_PORT PASSWORD SECONDS CLIENTS
"""

import base64
import json
import sys
import threading
import time
import urllib.request

import psycopg

http_port, pg_port, password = sys.argv[1], sys.argv[2], sys.argv[3]
seconds, clients = float(sys.argv[4]), int(sys.argv[5])
deadline = time.monotonic() + seconds
lock = threading.Lock()
latencies = {}
errors = []
torn = []

# One statement that reads two tables of one version: the segments'
# statistics and their members agree when both come from one snapshot.
SNAPSHOT = """
SELECT (SELECT coalesce(sum(contacts), 0) FROM segments),
       (SELECT count(*) FROM segment_members)
"""
SQL = [
    ("sql: snapshot", SNAPSHOT),
    ("sql: city of a segment",
     "SELECT c.city, count(*) FROM contacts c JOIN segment_members m ON m.contact_id = c.contact_id "
     "WHERE m.segment_id = 'email_subscribers' GROUP BY c.city ORDER BY 2 DESC LIMIT 5"),
    ("sql: top operations",
     "SELECT operation_id, count(*) FROM events WHERE type = 'email_click' "
     "GROUP BY operation_id ORDER BY 2 DESC LIMIT 5"),
]
PREVIEWS = [
    {"criteria": {"field": "city", "op": "eq", "value": "Paris"}},
    {"criteria": {"behavior": {"event": "email_open", "within": "30d"}}},
    {"criteria": {"behavior": {"event": "purchase", "within": "180d",
                               "having": {"agg": "sum", "field": "amount", "op": "gt", "value": 100}}}},
]


def note(kind, ms):
    with lock:
        latencies.setdefault(kind, []).append(ms)


def failed(kind, e):
    with lock:
        errors.append(f"{kind}: {e}")


def sql_client(i):
    try:
        conn = psycopg.connect(
            f"host=127.0.0.1 port={pg_port} user=segments password={password} dbname=segments",
            autocommit=True,
        )
    except Exception as e:  # noqa: BLE001
        failed("connect", e)
        return
    n = 0
    while time.monotonic() < deadline:
        kind, q = SQL[(i + n) % len(SQL)]
        n += 1
        t = time.perf_counter()
        try:
            rows = conn.execute(q).fetchall()
        except Exception as e:  # noqa: BLE001
            failed(kind, e)
            continue
        note(kind, (time.perf_counter() - t) * 1000)
        if kind == "sql: snapshot" and rows[0][0] != rows[0][1]:
            with lock:
                torn.append(list(rows[0]))
    conn.close()


def http_client(i):
    auth = "Basic " + base64.b64encode(f"segments:{password}".encode()).decode()
    n = 0
    while time.monotonic() < deadline:
        n += 1
        if (i + n) % 2:
            kind, req = "http: segments list", urllib.request.Request(
                f"http://127.0.0.1:{http_port}/api/segments?limit=1000", headers={"Authorization": auth})
        else:
            body = dict(PREVIEWS[(i + n) % len(PREVIEWS)], name="soak")
            kind, req = "http: preview", urllib.request.Request(
                f"http://127.0.0.1:{http_port}/api/preview", data=json.dumps(body).encode(),
                headers={"Authorization": auth, "Content-Type": "application/json"})
        t = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                json.loads(r.read())
        except Exception as e:  # noqa: BLE001
            failed(kind, e)
            continue
        note(kind, (time.perf_counter() - t) * 1000)


threads = [threading.Thread(target=sql_client if i % 2 == 0 else http_client, args=(i,))
           for i in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()


def quantile(v, q):
    s = sorted(v)
    return s[max(0, min(len(s) - 1, int(q * len(s) + 0.999999) - 1))]


print(json.dumps({
    "clients": clients,
    "seconds": seconds,
    "requests": {k: len(v) for k, v in latencies.items()},
    "p50_ms": {k: round(quantile(v, 0.5), 2) for k, v in latencies.items()},
    "p99_ms": {k: round(quantile(v, 0.99), 2) for k, v in latencies.items()},
    "errors": errors[:20],
    "error_count": len(errors),
    "torn": torn[:20],
}))
