#!/usr/bin/env python3
"""Run the `segments bench` workloads in DuckDB and compare.

`segments bench` leaves in its base directory the definitions of the nightly
workload (`bench-segments.json`), the members our engine computed for each
segment (`bench-members.parquet`) and its timings (`bench-report.json`). This
script does the same work with DuckDB, the obvious alternative a data engineer
would reach for, and answers two questions:

1. Is our engine right? Every segment is translated into one DuckDB SQL query
   by an independent translator of the criteria language (SPEC.md, "Segment
   definitions", "Field operators and empty values", "Behaviour criteria"),
   and its members must equal ours, segment by segment. Any difference is
   printed and makes the script exit non-zero.
2. Is our engine fast? The same workloads are timed in two DuckDB set-ups:

   - "parquet": views over `read_parquet` of the base's files (no load step,
     like our engine, which reads the Parquet files of the base);
   - "tables": the same data loaded first into DuckDB's native tables (load
     time reported separately), then the same queries.

Workloads (names as in bench-report.json):

- nightly: every segment in dependency order, each materialized as a table
  (`CREATE TABLE seg_<n> AS SELECT contact_id FROM contacts WHERE ...`) so
  that later segments read the tables of the segments they refer to;
- preview:<id>: `SELECT count(*)` of one definition;
- nested-count: ((email_subscribers ∪ sms_subscribers) ∩ active_contacts
  − email_bad_addresses) ∩ all_contacts, counted, over the materialized tables;
- overlap: the pairwise intersection counts of the `overlap` workload's
  segments, from their materialized tables (one self-join), checked equal
  to our matrix;
- sql:<name>: the three typical ad-hoc queries of bench-report.json, in
  DuckDB's dialect (segments read from the materialized tables);
- import:contacts-csv / import:events-parquet: DuckDB converting the bench's
  import files to Parquet (`COPY ... TO ... (FORMAT PARQUET)`), in rows/s.

Each mode runs in its own child process (this script, with the internal
`--mode` option), so that each reports its own peak memory (VmHWM).
As `segments bench` does, every timing is taken after one warm-up run.

Where the SPEC leaves room, the translator decides as our engine's README
does: `sum` over matching events whose column is all empty is 0; an empty
aggregate (avg/min/max/first/last) matches `is_empty` only, negative
operators included; `count`/`sum` `is_not_empty` match every contact; `where`
filters on event columns follow the field rules (an empty `url` matches
`not_contains`). Calendar days are computed in Python (zoneinfo) and passed
as UTC instants; a midnight inside a DST gap starts at the first local
instant after it. `import` criteria are not translated (they need the base's
import bitmaps): such a segment is reported as a mismatch. Case folding uses
DuckDB's lower(), which differs from Unicode lower case on rare letters (İ).

Usage:
    python3 benches/duckdb_compare.py --base DIR/base-NxK [--runs 3] [--threads 2]

Writes DIR/base-NxK/duckdb-report.json with every figure.
"""

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

UTC = dt.timezone.utc
MODES = ("parquet", "tables")


def ensure_duckdb():
    """Import duckdb, installing the pip package first if it is missing."""
    try:
        import duckdb  # noqa: F401
    except ImportError:
        print("installing the duckdb Python package...", file=sys.stderr)
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "duckdb"]
        if subprocess.run(pip).returncode != 0:
            # Debian-managed Pythons refuse plain installs (PEP 668).
            subprocess.check_call(pip + ["--break-system-packages"])
    import duckdb

    return duckdb


# ---------------------------------------------------------------------------
# SQL literals


def sql_str(s):
    return "'" + str(s).replace("'", "''") + "'"


def sql_ident(name):
    return '"' + str(name).replace('"', '""') + '"'


def sql_num(x):
    return f"CAST({float(x)!r} AS DOUBLE)"


def sql_ts(t):
    """A UTC instant as a TIMESTAMPTZ literal (µs precision)."""
    return "TIMESTAMPTZ " + sql_str(t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00"))


def sql_date(d):
    return "DATE " + sql_str(d.isoformat())


def sql_list(values):
    return "(" + ", ".join(sql_str(v) for v in values) + ")"


def sql_array(values):
    return "[" + ", ".join(sql_str(v) for v in values) + "]"


# ---------------------------------------------------------------------------
# Time: the evaluation instant, durations and calendar days in the base's zone


class Clock:
    """`as_of` (UTC) and the base's time zone, where calendar days are counted."""

    def __init__(self, as_of, time_zone):
        self.as_of = dt.datetime.fromisoformat(as_of.replace("Z", "+00:00")).astimezone(UTC)
        self.tz_name = time_zone or "UTC"
        self.tz = ZoneInfo(self.tz_name)
        self.today = self.as_of.astimezone(self.tz).date()

    def day_start(self, d):
        """The instant day `d` starts in the base's time zone. A midnight that
        falls in a DST gap starts at the first local instant after it."""
        return dt.datetime(d.year, d.month, d.day, tzinfo=self.tz).astimezone(UTC)

    def ago(self, duration):
        return self.as_of - duration


DURATION = re.compile(r"^\s*(\d+)([hdw])\s*$")


def parse_duration(s):
    """`Nh`, `Nd` or `Nw` as a timedelta (a day is 24 hours)."""
    m = DURATION.match(str(s))
    if not m:
        raise ValueError(f"{s!r} is not a duration such as '30d'")
    n, unit = int(m.group(1)), m.group(2)
    return dt.timedelta(hours=n * {"h": 1, "d": 24, "w": 24 * 7}[unit])


def duration_days(s):
    """Whole days of a duration, for date fields."""
    return parse_duration(s) // dt.timedelta(days=1)


def parse_date(s):
    return dt.date.fromisoformat(str(s)[:10]) if re.match(r"^\d{4}-\d{2}-\d{2}$", str(s)) else None


def anniversary_month_days(today, days):
    """The month*100+day values whose next anniversary on or after `today`
    falls within `days` days (29 February counts as 28 February in years
    that have none)."""
    out = set()
    for i in range(min(days, 366) + 1):
        d = today + dt.timedelta(days=i)
        out.add(d.month * 100 + d.day)
        if (d.month, d.day) == (2, 28) and not is_leap(d.year):
            out.add(229)
    return sorted(out)


def is_leap(year):
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


# ---------------------------------------------------------------------------
# Criteria -> SQL


class Unsupported(Exception):
    pass


NEGATIVE_OPS = {"neq", "not_in", "not_starts_with", "not_ends_with", "not_contains"}


class Translator:
    """Turns a criteria tree into a SQL boolean over one row of `contacts`.

    Every expression it returns is TRUE or FALSE, never NULL, so that `not`
    is exact. Segment references read the table materialized for that
    segment; behaviour conditions are subqueries over `events`.
    """

    def __init__(self, contact_types, event_types, clock, segment_tables):
        self.contact_types = contact_types  # field name -> type name
        self.event_types = event_types
        self.clock = clock
        self.segment_tables = segment_tables  # segment id or name -> table name

    def segment_query(self, criteria):
        return f"SELECT contact_id FROM contacts WHERE {self.criterion(criteria)}"

    def count_query(self, criteria):
        return f"SELECT count(*) FROM contacts WHERE {self.criterion(criteria)}"

    def criterion(self, c):
        if isinstance(c, dict) and "field" in c:
            return self.field(c, self.contact_types)
        if not isinstance(c, dict) or len(c) != 1:
            raise ValueError(f"a criterion is exactly one of all, any, not, field...: {c!r}")
        [(kind, arg)] = c.items()
        if kind == "all":
            return "(" + " AND ".join(self.criterion(x) for x in arg) + ")" if arg else "TRUE"
        if kind == "any":
            return "(" + " OR ".join(self.criterion(x) for x in arg) + ")" if arg else "FALSE"
        if kind == "not":
            return f"(NOT {self.criterion(arg)})"
        if kind == "behavior":
            return self.behavior(arg)
        if kind == "segment":
            if arg not in self.segment_tables:
                raise ValueError(f"segment {arg!r} is not computed before this one")
            return f"(contacts.contact_id IN (SELECT contact_id FROM {self.segment_tables[arg]}))"
        if kind == "sql":
            # A SQL predicate that is NULL does not hold, as in WHERE.
            return f"(({arg}) IS TRUE)"
        if kind == "query":
            return f"(contacts.contact_id IN (SELECT contact_id FROM ({arg})))"
        if kind == "import":
            raise Unsupported("import criteria need the base's import bitmaps")
        raise ValueError(f"unknown criterion kind {kind!r}")

    # -- fields ------------------------------------------------------------

    def field(self, cond, types):
        name = cond["field"]
        if name not in types:
            raise ValueError(f"unknown field {name!r}")
        return self.operator(
            types[name],
            cond["op"],
            cond.get("value"),
            cond.get("case_sensitive", False),
            sql_ident(name),
            on_aggregate=False,
        )

    def operator(self, ty, op, value, case_sensitive, col, on_aggregate):
        """`col <op> value` for a value of type `ty`, with the empty-value
        rules: positive operators never match an empty value; negative ones
        match it on text, number, date and timestamp fields (rule 3) but not
        on choice fields (rule 4) nor on behaviour aggregates."""
        empty = empty_sql(ty, col)
        if op == "is_empty":
            return empty
        if op == "is_not_empty":
            return f"(NOT {empty})"
        if op == "is_true":
            return f"({col} IS TRUE)"
        if op == "is_false":
            return f"({col} IS FALSE)"

        def positive(cond):
            return f"COALESCE(NOT {empty} AND ({cond}), FALSE)"

        def negative(cond):
            if ty == "choice" or on_aggregate:
                return f"COALESCE(NOT {empty} AND NOT ({cond}), FALSE)"
            return f"COALESCE({empty} OR NOT ({cond}), FALSE)"

        if ty == "choice":
            return self.choice_op(op, value, col, positive, negative)
        if ty == "text":
            return self.text_op(op, value, case_sensitive, col, positive, negative)
        if ty == "tags":
            return self.tags_op(op, value, case_sensitive, col, empty, positive)
        if ty == "number":
            return self.number_op(op, value, col, positive, negative)
        if ty == "date":
            return self.date_op(op, value, col, positive, negative)
        if ty == "timestamp":
            return self.timestamp_op(op, value, col, positive, negative)
        raise ValueError(f"operator {op!r} does not apply to a {ty} field")

    @staticmethod
    def choice_op(op, value, col, positive, negative):
        values = value if isinstance(value, list) else [value]
        cond = f"{col} IN {sql_list(values)}"
        if op in ("eq", "in"):
            return positive(cond)
        if op in ("neq", "not_in"):
            return negative(cond)
        raise ValueError(f"operator {op!r} does not apply to a choice field")

    @staticmethod
    def text_op(op, value, case_sensitive, col, positive, negative):
        def fold(s):
            return s if case_sensitive else s.lower()

        text = col if case_sensitive else f"lower({col})"
        if op in ("in", "not_in"):
            values = value if isinstance(value, list) else [value]
            cond = f"{text} IN {sql_list(fold(v) for v in values)}"
        else:
            v = sql_str(fold(value))
            # A negative operator is the negation of its positive twin.
            conditions = {
                ("eq", "neq"): f"{text} = {v}",
                ("starts_with", "not_starts_with"): f"starts_with({text}, {v})",
                ("ends_with", "not_ends_with"): f"ends_with({text}, {v})",
                ("contains", "not_contains"): f"contains({text}, {v})",
            }
            cond = next((c for ops, c in conditions.items() if op in ops), None)
            if cond is None:
                raise ValueError(f"operator {op!r} does not apply to a text field")
        return negative(cond) if op in NEGATIVE_OPS else positive(cond)

    @staticmethod
    def tags_op(op, value, case_sensitive, col, empty, positive):
        values = value if isinstance(value, list) else [value]
        if case_sensitive:
            tags, wanted = col, sql_array(values)
        else:
            tags, wanted = f"[lower(t) FOR t IN {col}]", sql_array(v.lower() for v in values)
        if op == "contains_any":
            return positive(f"list_has_any({tags}, {wanted})")
        if op == "contains_all":
            return positive(f"list_has_all({tags}, {wanted})")
        if op == "contains_none":  # rule 5: matches empty tags
            return f"COALESCE({empty} OR NOT list_has_any({tags}, {wanted}), FALSE)"
        raise ValueError(f"operator {op!r} does not apply to a tags field")

    @staticmethod
    def number_op(op, value, col, positive, negative):
        if op == "between":
            lo, hi = value
            return positive(f"{col} BETWEEN {sql_num(lo)} AND {sql_num(hi)}")
        compare = {"eq": "=", "neq": "=", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
        if op not in compare:
            raise ValueError(f"operator {op!r} does not apply to a number")
        cond = f"{col} {compare[op]} {sql_num(value)}"
        return negative(cond) if op == "neq" else positive(cond)

    def date_op(self, op, value, col, positive, negative):
        today = self.clock.today
        if op == "within_last":
            since = today - dt.timedelta(days=duration_days(value))
            return positive(f"{col} BETWEEN {sql_date(since)} AND {sql_date(today)}")
        if op == "more_than_ago":
            until = today - dt.timedelta(days=duration_days(value))
            return positive(f"{col} < {sql_date(until)}")
        if op == "anniversary_within":
            return positive(self.anniversary(f"{col}", value))
        if op == "between":
            lo, hi = (dt.date.fromisoformat(v) for v in value)
            return positive(f"{col} BETWEEN {sql_date(lo)} AND {sql_date(hi)}")
        d = sql_date(dt.date.fromisoformat(value))
        cond = {"eq": f"{col} = {d}", "neq": f"{col} = {d}", "before": f"{col} < {d}", "after": f"{col} > {d}"}
        if op not in cond:
            raise ValueError(f"operator {op!r} does not apply to a date")
        return negative(cond[op]) if op == "neq" else positive(cond[op])

    def timestamp_op(self, op, value, col, positive, negative):
        clock = self.clock
        if op == "within_last":
            since = clock.ago(parse_duration(value))
            return positive(f"{col} > {sql_ts(since)} AND {col} <= {sql_ts(clock.as_of)}")
        if op == "more_than_ago":
            return positive(f"{col} <= {sql_ts(clock.ago(parse_duration(value)))}")
        if op == "anniversary_within":
            local_day = f"(CAST({col} AS TIMESTAMPTZ) AT TIME ZONE {sql_str(clock.tz_name)})"
            return positive(self.anniversary(local_day, value))

        # The other operators compare the calendar day of the value, in the base's zone.
        def start(d):
            return sql_ts(clock.day_start(d))

        def next_start(d):
            return sql_ts(clock.day_start(d + dt.timedelta(days=1)))

        if op == "between":
            lo, hi = (dt.date.fromisoformat(v) for v in value)
            return positive(f"{col} >= {start(lo)} AND {col} < {next_start(hi)}")
        d = dt.date.fromisoformat(value)
        same_day = f"{col} >= {start(d)} AND {col} < {next_start(d)}"
        if op == "eq":
            return positive(same_day)
        if op == "neq":
            return negative(same_day)
        if op == "before":
            return positive(f"{col} < {start(d)}")
        if op == "after":
            return positive(f"{col} >= {next_start(d)}")
        raise ValueError(f"operator {op!r} does not apply to a timestamp")

    def anniversary(self, day_expr, value):
        month_days = anniversary_month_days(self.clock.today, duration_days(value))
        return f"(month({day_expr}) * 100 + day({day_expr})) IN ({', '.join(map(str, month_days))})"

    # -- behaviour ---------------------------------------------------------

    def behavior(self, b):
        """Contacts whose matching events pass `having`. Contacts without a
        matching event have count 0 and sum 0 (other aggregates are empty);
        when that passes, they are taken as "every contact except those whose
        matching events fail", an anti-join."""
        having = b.get("having") or {"agg": "count", "op": "gte", "value": 1}
        where = " AND ".join(self.event_filters(b))
        agg, op, value = having.get("agg", "count"), having["op"], having.get("value")
        if agg == "count" and (op, value) in (("gte", 1), ("gt", 0)):
            # The default: at least one matching event; no grouping needed.
            return f"(contacts.contact_id IN (SELECT contact_id FROM events WHERE {where}))"
        passes = self.having_sql(agg, having.get("field", "amount"), op, value)
        grouped = f"SELECT contact_id FROM events WHERE {where} GROUP BY contact_id"
        if zero_events_pass(agg, op, value):
            return f"(contacts.contact_id NOT IN ({grouped} HAVING NOT {passes}))"
        return f"(contacts.contact_id IN ({grouped} HAVING {passes}))"

    def event_filters(self, b):
        clock = self.clock
        types = b["event"] if isinstance(b["event"], list) else [b["event"]]
        filters = [f"ts <= {sql_ts(clock.as_of)}", f"type IN {sql_list(types)}"]
        if b.get("operation") is not None:
            ops = b["operation"] if isinstance(b["operation"], list) else [b["operation"]]
            filters.append(f"operation_id IN {sql_list(ops)}")
        for w in b.get("where") or []:
            filters.append(self.field(w, self.event_types))
        within = b.get("within")
        if isinstance(within, str):
            filters.append(f"ts > {sql_ts(clock.ago(parse_duration(within)))}")
        elif isinstance(within, dict):
            if within.get("after") is not None:
                filters.append(f"ts >= {sql_ts(self.bound(within['after']))}")
            if within.get("before") is not None:
                filters.append(f"ts < {sql_ts(self.bound(within['before']))}")
        return filters

    def bound(self, s):
        """A window bound: a date is midnight of that day in the base's zone,
        a duration is as_of minus it."""
        d = parse_date(s)
        return self.clock.day_start(d) if d else self.clock.ago(parse_duration(s))

    def having_sql(self, agg, column, op, value):
        col = sql_ident(column)
        value_sql = {
            "count": "count(*)",
            "sum": f"COALESCE(sum({col}), 0)",
            "avg": f"avg({col})",
            "min": f"min({col})",
            "max": f"max({col})",
            "first": "min(ts)",
            "last": "max(ts)",
        }[agg]
        if agg in ("first", "last"):
            return self.operator("timestamp", op, value, False, value_sql, on_aggregate=True)
        return self.operator("number", op, value, False, f"CAST({value_sql} AS DOUBLE)", on_aggregate=True)


def empty_sql(ty, col):
    """A field is empty when it is null, or for text, the empty string
    (for tags: no value at all)."""
    if ty == "text":
        return f"({col} IS NULL OR {col} = '')"
    if ty == "tags":
        return f"({col} IS NULL OR len({col}) = 0)"
    return f"({col} IS NULL)"


def zero_events_pass(agg, op, value):
    """Does a contact without matching events pass `having`? Its count and
    sum are 0; its avg, min, max, first and last are empty."""
    if agg not in ("count", "sum"):
        return op == "is_empty"
    if op == "between":
        return value[0] <= 0 <= value[1]
    tests = {
        "eq": lambda v: 0 == v,
        "neq": lambda v: 0 != v,
        "lt": lambda v: 0 < v,
        "lte": lambda v: 0 <= v,
        "gt": lambda v: 0 > v,
        "gte": lambda v: 0 >= v,
        "is_not_empty": lambda v: True,
    }
    return op in tests and tests[op](value)


# ---------------------------------------------------------------------------
# The base on disk


def latest_manifest(base):
    """The newest readable manifest (they are named by a 20-digit version)."""
    names = sorted(p for p in (base / "manifests").glob("*.json") if re.fullmatch(r"\d{20}\.json", p.name))
    for path in reversed(names):
        try:
            return json.loads(path.read_text())
        except ValueError:
            continue  # a manifest being written: take the previous one
    raise SystemExit(f"{base}: no manifest in {base / 'manifests'}")


def data_files(base, manifest):
    contacts = str(base / manifest["contacts"]["path"])
    events = [str(base / e["file"]["path"]) for e in manifest.get("events", [])]
    return contacts, events


DUCKDB_TYPES = [
    (r"^(VARCHAR|TEXT)\[\]$", "tags"),
    (r"^(VARCHAR|TEXT)$", "text"),
    (r"^BOOLEAN$", "bool"),
    (r"^DATE$", "date"),
    (r"^TIMESTAMP", "timestamp"),
    (r"^(U?(TINY|SMALL|BIG|HUGE)?INT(EGER)?|DOUBLE|FLOAT|REAL|DECIMAL.*)$", "number"),
]


# Choice fields of the SPEC's recognised contact columns.
RECOGNISED_CHOICES = {"email_status", "sms_status"}


def column_types(con, table, declared):
    """Field types of a table: inferred from DuckDB's column types, then
    overridden by the types the manifest declares (choice fields, tags)."""
    types = {}
    for name, duck_type, *_ in con.execute(f"DESCRIBE {table}").fetchall():
        for pattern, ty in DUCKDB_TYPES:
            if re.match(pattern, duck_type):
                types[name] = ty
                break
        if name in RECOGNISED_CHOICES:
            types[name] = "choice"
    for f in declared:
        types[f["name"]] = f["type"]
    return types


# ---------------------------------------------------------------------------
# Timing helpers


def time_runs(runs, fn):
    """Milliseconds of `runs` runs of fn, after one warm-up run."""
    fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def summary(runs_ms, **extra):
    return {
        "median_ms": statistics.median(runs_ms),
        "min_ms": min(runs_ms),
        "max_ms": max(runs_ms),
        "runs_ms": runs_ms,
        **extra,
    }


def peak_rss_mb():
    """Peak resident memory of this process (Linux VmHWM), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------
# One mode (runs in a child process)


def open_mode(duckdb, base, mode, threads):
    """A DuckDB connection with `contacts` and `events` as views over the
    Parquet files ("parquet") or as loaded tables ("tables"); returns it
    with the load time in ms (None for views)."""
    manifest = latest_manifest(base)
    contacts_file, event_files = data_files(base, manifest)
    con = duckdb.connect()
    con.execute(f"SET threads = {int(threads)}")
    con.execute("SET TimeZone = 'UTC'")
    kind = "VIEW" if mode == "parquet" else "TABLE"
    t0 = time.perf_counter()
    con.execute(f"CREATE {kind} contacts AS SELECT * FROM read_parquet({sql_str(contacts_file)})")
    if event_files:
        files = sql_array(event_files)
        con.execute(f"CREATE {kind} events AS SELECT * FROM read_parquet({files}, union_by_name = true)")
    else:
        con.execute(
            "CREATE TABLE events (contact_id UBIGINT, ts TIMESTAMPTZ, type VARCHAR,"
            " operation_id VARCHAR, url VARCHAR, amount DOUBLE, name VARCHAR)"
        )
    load_ms = (time.perf_counter() - t0) * 1000.0 if mode == "tables" else None
    return con, manifest, load_ms


def translate_all(segments, translator):
    """(segment id, table, SQL or None, error) for each segment, in order;
    each table is registered for the references of the next segments."""
    out = []
    for n, seg in enumerate(segments):
        table = f"seg_{n}"
        try:
            sql, error = translator.segment_query(seg["criteria"]), None
        except (Unsupported, ValueError, KeyError, TypeError) as e:
            sql, error = None, f"cannot translate: {e}"
        translator.segment_tables[seg["id"]] = table
        translator.segment_tables.setdefault(seg.get("name", seg["id"]), table)
        out.append((seg["id"], table, sql, error))
    return out


def run_nightly(con, plan):
    """Materialize every segment in order; returns {segment id: error}."""
    errors = {}
    for seg_id, table, sql, error in plan:
        if sql is not None:
            try:
                con.execute(f"CREATE OR REPLACE TABLE {table} AS {sql}")
                continue
            except Exception as e:  # a failing segment does not stop the others
                error = f"{type(e).__name__}: {e}"
        errors[seg_id] = error
        con.execute(f"CREATE OR REPLACE TABLE {table} (contact_id UBIGINT)")
    return errors


def compare_members(con, plan, members_file, errors):
    """Per segment, DuckDB's members against bench-members.parquet; returns
    the list of differing segments."""
    con.execute(
        "CREATE TABLE expected AS SELECT segment_id, CAST(contact_id AS UBIGINT) AS contact_id"
        f" FROM read_parquet({sql_str(str(members_file))})"
    )
    mismatches = []
    for seg_id, table, _, _ in plan:
        theirs = f"SELECT contact_id FROM expected WHERE segment_id = {sql_str(seg_id)}"
        ours = f"SELECT contact_id FROM {table}"

        def difference(a, b):
            n, first = con.execute(
                f"SELECT count(*), list(contact_id ORDER BY contact_id)[1:5] FROM ({a} EXCEPT {b})"
            ).fetchone()
            return n, first or []

        only_duckdb, first_duckdb = difference(ours, theirs)
        only_segments, first_segments = difference(theirs, ours)
        if only_duckdb or only_segments or seg_id in errors:
            mismatches.append(
                {
                    "segment": seg_id,
                    "duckdb_count": con.execute(f"SELECT count(*) FROM {table}").fetchone()[0],
                    "segments_count": con.execute(f"SELECT count(*) FROM ({theirs})").fetchone()[0],
                    "only_in_duckdb": only_duckdb,
                    "only_in_duckdb_first": first_duckdb,
                    "only_in_segments": only_segments,
                    "only_in_segments_first": first_segments,
                    "error": errors.get(seg_id),
                }
            )
    return mismatches


NESTED = ["email_subscribers", "sms_subscribers", "active_contacts", "email_bad_addresses", "all_contacts"]


def nested_count_sql(tables):
    """((email_subscribers ∪ sms_subscribers) ∩ active − bad addresses) ∩ all."""
    subs, sms, active, bad, everyone = (f"SELECT contact_id FROM {tables[s]}" for s in NESTED)
    return (
        "SELECT count(*) FROM ("
        f"SELECT contact_id FROM ((SELECT contact_id FROM ({subs} UNION {sms}) INTERSECT {active}) EXCEPT {bad})"
        f" INTERSECT {everyone})"
    )


def overlap_sql(tables, ids):
    """Every pairwise intersection count of some segments, from their tables."""
    members = " UNION ALL ".join(f"SELECT {i} AS i, contact_id FROM {tables[s]}" for i, s in enumerate(ids))
    return (
        f"WITH m AS ({members}) "
        "SELECT a.i, b.i, count(*) FROM m a JOIN m b USING (contact_id) GROUP BY a.i, b.i"
    )


def overlap_matrix(con, sql, n):
    matrix = [[0] * n for _ in range(n)]
    for i, j, c in con.execute(sql).fetchall():
        matrix[i][j] = c
    return matrix


def run_mode(args):
    """Everything one DuckDB set-up does; writes its figures to args.result."""
    duckdb = ensure_duckdb()
    base = Path(args.base)
    bench = json.loads((base / "bench-segments.json").read_text())
    report = read_report(base)
    con, manifest, load_ms = open_mode(duckdb, base, args.mode, args.threads)
    clock = Clock(bench["as_of"], bench.get("time_zone"))
    translator = Translator(
        column_types(con, "contacts", manifest.get("fields", [])),
        column_types(con, "events", manifest.get("event_columns", [])),
        clock,
        {},
    )
    plan = translate_all(bench["segments"], translator)
    log(f"[{args.mode}] nightly: {len(plan)} segments")
    errors = {}
    nightly_runs = time_runs(args.runs, lambda: errors.update(run_nightly(con, plan)))
    out = {
        "mode": args.mode,
        "threads": args.threads,
        "load_ms": load_ms,
        "nightly": summary(nightly_runs, peak_rss_mb=peak_rss_mb(), segments=len(plan)),
        "sql": {seg_id: sql for seg_id, _, sql, _ in plan},
    }

    log(f"[{args.mode}] checking members against bench-members.parquet")
    out["mismatches"] = compare_members(con, plan, base / "bench-members.parquet", errors)

    out["previews"] = {}
    for p in report.get("preview_segments", []):
        sql = translator.count_query(p["criteria"])
        count = con.execute(sql).fetchone()[0]
        runs = time_runs(args.runs, lambda: con.execute(sql).fetchone())
        out["previews"][p["id"]] = summary(runs, count=count)

    tables = translator.segment_tables
    if all(s in tables for s in NESTED):
        sql = nested_count_sql(tables)
        count = con.execute(sql).fetchone()[0]
        runs = time_runs(max(args.runs, 5) * 20, lambda: con.execute(sql).fetchone())
        out["nested_count"] = summary(runs, count=count)

    ov = report.get("overlap") or {}
    ids = ov.get("segments") or []
    if ids and all(s in tables for s in ids):
        sql = overlap_sql(tables, ids)
        matrix = overlap_matrix(con, sql, len(ids))
        runs = time_runs(max(args.runs, 5) * 4, lambda: con.execute(sql).fetchall())
        out["overlap"] = summary(runs, same=matrix == ov.get("matrix"))

    out["sql_queries"] = {}
    for q in report.get("sql_queries", []):
        sql = re.sub(r"\{seg:([^}]+)\}", lambda m: tables[m.group(1)], q["duckdb"])
        # Materialized in a temporary table, as our engine collects the rows.
        run = f"CREATE OR REPLACE TEMP TABLE sql_result AS {sql}"
        con.execute(run)
        rows = con.execute("SELECT count(*) FROM sql_result").fetchone()[0]
        runs = time_runs(args.runs, lambda: con.execute(run))
        out["sql_queries"][q["name"]] = summary(runs, rows=rows)
    Path(args.result).write_text(json.dumps(out, indent=1, default=str))


# ---------------------------------------------------------------------------
# Import (in the parent)


def resolve(base, path):
    p = Path(path)
    return p if p.is_absolute() or not (base / p).exists() else base / p


def run_imports(duckdb, base, report, runs, threads):
    """DuckDB turning the bench's import files into Parquet."""
    info = report.get("import") or {}
    jobs = [
        ("import:contacts-csv", info.get("contacts_csv"), info.get("contacts_rows"), "read_csv_auto"),
        ("import:events-parquet", info.get("events_parquet"), info.get("events_rows"), "read_parquet"),
    ]
    out = {}
    con = duckdb.connect()
    con.execute(f"SET threads = {int(threads)}")
    with tempfile.TemporaryDirectory(prefix="duckdb-import-", dir=base) as scratch:
        target = sql_str(str(Path(scratch) / "x.parquet"))
        for name, path, rows, reader in jobs:
            if not path:
                continue
            source = sql_str(str(resolve(base, path)))
            sql = f"COPY (SELECT * FROM {reader}({source})) TO {target} (FORMAT PARQUET)"
            ms = time_runs(runs, lambda: con.execute(sql))
            med = statistics.median(ms)
            out[name] = summary(ms, rows=rows, rows_per_s=(rows or 0) / med * 1000.0 if med else None)
    return out


# ---------------------------------------------------------------------------
# Report


def read_report(base):
    path = base / "bench-report.json"
    return json.loads(path.read_text()) if path.exists() else {}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run_child(args, mode):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = f.name
    try:
        cmd = [
            sys.executable, os.path.abspath(__file__), "--base", str(args.base),
            "--runs", str(args.runs), "--threads", str(args.threads),
            "--mode", mode, "--result", result,
        ]
        subprocess.run(cmd, check=True)
        return json.loads(Path(result).read_text())
    finally:
        os.unlink(result)


def ratio(a, b):
    return f"{a / b:.3g}" if a is not None and b else "-"


def ms(x):
    if x is None:
        return "-"
    return f"{x:.1f}" if x >= 10 else f"{x:.3f}"


def comparison_rows(report, modes, imports):
    """(workload, segments ms, duckdb-parquet ms, duckdb-tables ms)."""
    ours = {w["name"]: w.get("median_ms") for w in report.get("workloads", [])}
    rows = [("nightly", ours.get("nightly"), *(modes[m]["nightly"]["median_ms"] for m in MODES))]
    for p in report.get("preview_segments", []):
        name = f"preview:{p['id']}"
        rows.append((name, ours.get(name), *(modes[m]["previews"][p["id"]]["median_ms"] for m in MODES)))
    if all("nested_count" in modes[m] for m in MODES):
        rows.append(("nested-count", ours.get("nested-count"), *(modes[m]["nested_count"]["median_ms"] for m in MODES)))
    if all("overlap" in modes[m] for m in MODES):
        rows.append(("overlap", ours.get("overlap"), *(modes[m]["overlap"]["median_ms"] for m in MODES)))
    for q in report.get("sql_queries", []):
        name = f"sql:{q['name']}"
        if all(q["name"] in modes[m].get("sql_queries", {}) for m in MODES):
            rows.append((name, ours.get(name), *(modes[m]["sql_queries"][q["name"]]["median_ms"] for m in MODES)))
    for name, figures in imports.items():
        rows.append((name, ours.get(name), figures["median_ms"], None))
    rows.append(("load into tables", None, None, modes["tables"]["load_ms"]))
    return rows


def print_table(rows, report, modes):
    header = ("workload", "segments ms", "duckdb-parquet ms", "duckdb-tables ms", "seg/parquet", "seg/tables")
    lines = [header] + [(w, ms(s), ms(p), ms(t), ratio(s, p), ratio(s, t)) for w, s, p, t in rows]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for k, line in enumerate(lines):
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
        if k == 0:
            print("  ".join("-" * w for w in widths))
    ours = {w["name"]: w for w in report.get("workloads", [])}
    rss = ours.get("nightly", {}).get("peak_rss_mb")
    print(
        f"\npeak RSS (MiB) after nightly: segments {ms(rss)}, "
        f"duckdb-parquet {ms(modes['parquet']['nightly']['peak_rss_mb'])}, "
        f"duckdb-tables {ms(modes['tables']['nightly']['peak_rss_mb'])}"
    )
    print("ratios below 1 mean segments is faster.")


def count_checks(report, modes):
    """Preview and nested-count results against the counts in the notes of
    bench-report.json ("N contacts", "... = N"), when they can be read."""
    problems = []
    notes = {w["name"]: w.get("note", "") for w in report.get("workloads", [])}
    for mode in MODES:
        for pid, fig in modes[mode]["previews"].items():
            m = re.match(r"^(\d+) contacts", notes.get(f"preview:{pid}", ""))
            if m and int(m.group(1)) != fig["count"]:
                problems.append(f"[{mode}] preview:{pid}: duckdb {fig['count']}, segments {m.group(1)}")
        ov = modes[mode].get("overlap")
        if ov and not ov["same"]:
            problems.append(f"[{mode}] overlap: the matrix differs from ours")
        nested = modes[mode].get("nested_count")
        m = re.search(r"= (\d+)$", notes.get("nested-count", ""))
        if nested and m and int(m.group(1)) != nested["count"]:
            problems.append(f"[{mode}] nested-count: duckdb {nested['count']}, segments {m.group(1)}")
    return problems


def print_mismatches(modes):
    bad = False
    for mode in MODES:
        for mm in modes[mode]["mismatches"]:
            bad = True
            print(
                f"MISMATCH [{mode}] {mm['segment']}: duckdb {mm['duckdb_count']}, segments {mm['segments_count']};"
                f" only in duckdb {mm['only_in_duckdb']} {mm['only_in_duckdb_first']},"
                f" only in segments {mm['only_in_segments']} {mm['only_in_segments_first']}"
                + (f"; {mm['error']}" if mm["error"] else "")
            )
            print(f"  sql: {modes[mode]['sql'].get(mm['segment'])}")
    return bad


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, type=Path, help="a base of `segments bench` (DIR/base-NxK)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per workload, after a warm-up")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # internal: one child
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.base = args.base.resolve()
    if args.mode:
        run_mode(args)
        return 0

    for name in ("bench-segments.json", "bench-members.parquet"):
        if not (args.base / name).exists():
            raise SystemExit(f"{args.base / name} is missing: run `segments bench` first")
    duckdb = ensure_duckdb()
    report = read_report(args.base)
    modes = {mode: run_child(args, mode) for mode in MODES}
    log("import")
    imports = run_imports(duckdb, args.base, report, args.runs, args.threads)

    rows = comparison_rows(report, modes, imports)
    print(f"\nbase {args.base}: {report.get('contacts', '?')} contacts, {report.get('events', '?')} events,"
          f" {modes['parquet']['nightly']['segments']} segments; duckdb {duckdb.__version__},"
          f" {args.threads} threads, median of {args.runs} runs\n")
    print_table(rows, report, modes)
    bad = print_mismatches(modes)
    problems = count_checks(report, modes)
    for p in problems:
        print(f"MISMATCH {p}")
    if not bad and not problems:
        print(f"all {modes['parquet']['nightly']['segments']} segments have the same members in DuckDB (both modes)")

    out = {
        "base": str(args.base),
        "duckdb_version": duckdb.__version__,
        "threads": args.threads,
        "runs": args.runs,
        "contacts": report.get("contacts"),
        "events": report.get("events"),
        "workloads": [
            {"name": w, "segments_median_ms": s, "duckdb_parquet_median_ms": p, "duckdb_tables_median_ms": t,
             "ratio_segments_over_duckdb_parquet": s / p if s and p else None,
             "ratio_segments_over_duckdb_tables": s / t if s and t else None}
            for w, s, p, t in rows
        ],
        "modes": modes,
        "imports": imports,
        "count_mismatches": problems,
        "ok": not bad and not problems,
    }
    path = args.base / "duckdb-report.json"
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"report: {path}")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
