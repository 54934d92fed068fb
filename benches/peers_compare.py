#!/usr/bin/env python3
"""Run the `segments bench` workloads in DuckDB and in ClickHouse, and compare.

`segments bench` leaves in its base directory the definitions of the nightly
workload (`bench-segments.json`), the members our engine computed for each
segment (`bench-members.parquet`) and its timings (`bench-report.json`). This
script does the same work with the two engines a data engineer would reach
for, DuckDB and ClickHouse (embedded, through chDB), and answers two questions:

1. Is our engine right? Every segment is translated into one SQL query by an
   independent translator of the criteria language (SPEC.md, "Segment
   definitions", "Field operators and empty values", "Behaviour criteria"),
   written in each peer's dialect, and its members must equal ours, segment
   by segment. Any difference is printed and makes the script exit non-zero.
2. Is our engine fast? The same workloads are timed in four set-ups:

   - "duckdb-parquet" and "clickhouse-parquet": views over the base's
     Parquet files (`read_parquet`, `file(..., Parquet)`): no load step, like
     our engine, which reads the Parquet files of the base;
   - "duckdb-tables" and "clickhouse-tables": the same data loaded first
     into the engine's native tables (DuckDB tables; ClickHouse MergeTree
     tables ordered by contact, and events by type, contact and time), load
     time reported separately, then the same queries.

Workloads (names as in bench-report.json), each in the peer's best
formulation:

- nightly: every segment in dependency order, each materialized as a table
  (`CREATE TABLE seg_<n> AS SELECT contact_id FROM contacts WHERE ...`) so
  that later segments read the tables of the segments they refer to;
- preview:<id>: `SELECT count(*)` of one definition;
- nested-count: ((email_subscribers ∪ sms_subscribers) ∩ active_contacts
  − email_bad_addresses) ∩ all_contacts, counted: DuckDB with set operations
  over the materialized tables; ClickHouse over each segment's
  `groupBitmapState` (`bitmapOr`, `bitmapAnd`, `bitmapAndnot`,
  `bitmapCardinality`), as ClickHouse users keep segments; the bitmaps are
  built once after the nightly, untimed, as our engine's are;
- overlap: the pairwise intersection counts of the `overlap` workload's
  segments, checked equal to our matrix: DuckDB with one self-join of the
  tables, ClickHouse with `bitmapAndCardinality` over the bitmaps;
- sql:<name>: the three typical ad-hoc queries of bench-report.json, written
  in standard SQL that both peers run as is (segments read from the
  materialized tables);
- import:contacts-csv / import:events-parquet: each peer converting the
  bench's import files to Parquet, in rows/s.

Each set-up runs in its own child process (this script, with the internal
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
each peer's Unicode lower case (DuckDB's lower(), ClickHouse's lowerUTF8()),
which differ from ours on rare letters (İ).

Usage:
    python3 benches/peers_compare.py --base DIR/base-NxK [--runs 3] [--threads 2]
        [--peers duckdb,clickhouse] [--modes parquet,tables]

The Python packages `duckdb` and `chdb` are installed with pip when missing.
Writes DIR/base-NxK/peers-report.json with every figure.
"""

import argparse
import datetime as dt
import importlib
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
PEERS = ("duckdb", "clickhouse")
MODES = ("parquet", "tables")


def ensure(module, package):
    """Import a module, installing its pip package first if it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        print(f"installing the {package} Python package...", file=sys.stderr)
        pip = [sys.executable, "-m", "pip", "install", "--quiet", package]
        if subprocess.run(pip).returncode != 0:
            # Debian-managed Pythons refuse plain installs (PEP 668).
            subprocess.check_call(pip + ["--break-system-packages"])
        return importlib.import_module(module)


# ---------------------------------------------------------------------------
# SQL literals common to both dialects


def sql_str(s):
    return "'" + str(s).replace("'", "''") + "'"


def sql_ident(name):
    return '"' + str(name).replace('"', '""') + '"'


def sql_num(x):
    return f"CAST({float(x)!r} AS DOUBLE)"


def sql_list(values):
    return "(" + ", ".join(sql_str(v) for v in values) + ")"


def sql_array(values):
    return "[" + ", ".join(sql_str(v) for v in values) + "]"


# ---------------------------------------------------------------------------
# The two peers: their dialects and how each one runs the workloads


class DuckDB:
    """DuckDB: views over `read_parquet`, or its native tables."""

    name = "duckdb"
    TYPES = [
        (r"^(VARCHAR|TEXT)\[\]$", "tags"),
        (r"^(VARCHAR|TEXT)$", "text"),
        (r"^BOOLEAN$", "bool"),
        (r"^DATE$", "date"),
        (r"^TIMESTAMP", "timestamp"),
        (r"^(U?(TINY|SMALL|BIG|HUGE)?INT(EGER)?|DOUBLE|FLOAT|REAL|DECIMAL.*)$", "number"),
    ]

    # -- dialect -------------------------------------------------------------

    @staticmethod
    def ts(t):
        """A UTC instant as a TIMESTAMPTZ literal (µs precision)."""
        return "TIMESTAMPTZ " + sql_str(t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00"))

    @staticmethod
    def date(d):
        return "DATE " + sql_str(d.isoformat())

    @staticmethod
    def lower(x):
        return f"lower({x})"

    @staticmethod
    def starts_with(a, b):
        return f"starts_with({a}, {b})"

    @staticmethod
    def ends_with(a, b):
        return f"ends_with({a}, {b})"

    @staticmethod
    def contains(a, b):
        return f"contains({a}, {b})"

    @staticmethod
    def lower_list(col):
        return f"[lower(t) FOR t IN {col}]"

    @staticmethod
    def has_any(a, b):
        return f"list_has_any({a}, {b})"

    @staticmethod
    def has_all(a, b):
        return f"list_has_all({a}, {b})"

    @staticmethod
    def length(col):
        return f"len({col})"

    @staticmethod
    def hash(col):
        return f"hash({col})"

    @staticmethod
    def local_time(col, tz):
        return f"(CAST({col} AS TIMESTAMPTZ) AT TIME ZONE {sql_str(tz)})"

    # -- engine --------------------------------------------------------------

    def __init__(self):
        self.module = ensure("duckdb", "duckdb")
        self.version = self.module.__version__
        self.con = None

    def open(self, contacts_file, event_files, mode, threads):
        """`contacts` and `events` as views over the Parquet files
        ("parquet") or as loaded tables ("tables"); returns the load time in
        ms (None for views)."""
        con = self.con = self.module.connect()
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
        return (time.perf_counter() - t0) * 1000.0 if mode == "tables" else None

    def execute(self, sql):
        self.con.execute(sql)

    def rows(self, sql):
        return self.con.execute(sql).fetchall()

    def describe(self, table):
        return [(r[0], r[1]) for r in self.rows(f"DESCRIBE {table}")]

    def materialize(self, table, sql):
        self.execute(f"CREATE OR REPLACE TABLE {table} AS {sql}")

    def materialize_empty(self, table):
        self.execute(f"CREATE OR REPLACE TABLE {table} (contact_id UBIGINT)")

    def load_expected(self, members_file):
        self.execute(
            "CREATE TABLE expected AS SELECT CAST(segment_id AS VARCHAR) AS segment_id,"
            f" CAST(contact_id AS UBIGINT) AS contact_id FROM read_parquet({sql_str(str(members_file))})"
        )

    def prepare_counts(self, tables, ids):
        """Nothing to build: counts are set operations over the tables."""

    def nested_count_sql(self, tables):
        subs, sms, active, bad, everyone = (f"SELECT contact_id FROM {tables[s]}" for s in NESTED)
        return (
            "SELECT count(*) FROM ("
            f"SELECT contact_id FROM ((SELECT contact_id FROM ({subs} UNION {sms}) INTERSECT {active}) EXCEPT {bad})"
            f" INTERSECT {everyone})"
        )

    def overlap_sql(self, tables, ids):
        members = " UNION ALL ".join(f"SELECT {i} AS i, contact_id FROM {tables[s]}" for i, s in enumerate(ids))
        return (
            f"WITH m AS ({members}) "
            "SELECT a.i, b.i, count(*) FROM m a JOIN m b USING (contact_id) GROUP BY a.i, b.i"
        )

    def collect(self, sql):
        """A query's rows kept by the engine, as our engine collects them."""
        self.execute(f"CREATE OR REPLACE TEMP TABLE sql_result AS {sql}")
        return self.rows("SELECT count(*) FROM sql_result")[0][0]

    def to_parquet(self, source, kind, target):
        reader = "read_csv_auto" if kind == "csv" else "read_parquet"
        return f"COPY (SELECT * FROM {reader}({sql_str(source)})) TO {sql_str(target)} (FORMAT PARQUET)"


class ClickHouse:
    """ClickHouse embedded (chDB): views over `file(..., Parquet)`, or
    MergeTree tables."""

    name = "clickhouse"
    TYPES = [
        (r"^Array\((Nullable\()?(LowCardinality\()?String", "tags"),
        (r"^(Nullable\()?(LowCardinality\()?(Nullable\()?String", "text"),
        (r"^(Nullable\()?Bool", "bool"),
        (r"^(Nullable\()?Date(32)?\)?$", "date"),
        (r"^(Nullable\()?DateTime", "timestamp"),
        (r"^(Nullable\()?(U?Int\d+|Float\d+|Decimal)", "number"),
    ]

    # -- dialect -------------------------------------------------------------

    @staticmethod
    def ts(t):
        """A UTC instant as a DateTime64(6, 'UTC') literal."""
        return f"toDateTime64({sql_str(t.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S.%f'))}, 6, 'UTC')"

    @staticmethod
    def date(d):
        return f"toDate32({sql_str(d.isoformat())})"

    @staticmethod
    def lower(x):
        return f"lowerUTF8({x})"  # lower() folds ASCII letters only

    @staticmethod
    def starts_with(a, b):
        return f"startsWith({a}, {b})"

    @staticmethod
    def ends_with(a, b):
        return f"endsWith({a}, {b})"

    @staticmethod
    def contains(a, b):
        return f"(position({a}, {b}) > 0)"

    @staticmethod
    def lower_list(col):
        return f"arrayMap(t -> lowerUTF8(t), {col})"

    @staticmethod
    def has_any(a, b):
        return f"hasAny({a}, {b})"

    @staticmethod
    def has_all(a, b):
        return f"hasAll({a}, {b})"

    @staticmethod
    def length(col):
        return f"length({col})"

    @staticmethod
    def hash(col):
        return f"cityHash64({col})"

    @staticmethod
    def local_time(col, tz):
        return f"toTimeZone({col}, {sql_str(tz)})"

    # -- engine --------------------------------------------------------------

    def __init__(self):
        chdb = ensure("chdb", "chdb")
        self.version = chdb.__version__
        self.session = importlib.import_module("chdb.session").Session()
        self.version = f"{chdb.__version__} (ClickHouse {self.rows('SELECT version()')[0][0]})"

    def open(self, contacts_file, event_files, mode, threads):
        """`contacts` and `events` as views over the Parquet files, or as
        MergeTree tables ordered as a ClickHouse user would order them;
        returns the load time in ms (None for views)."""
        self.execute(f"SET max_threads = {int(threads)}")
        self.execute("SET session_timezone = 'UTC'")
        self.execute("CREATE DATABASE IF NOT EXISTS bench")
        self.execute("USE bench")
        contacts = f"file({sql_str(contacts_file)}, Parquet)"
        events = None
        if event_files:
            # One table function over the files: brace alternatives under
            # their common directory, columns united by name.
            root = os.path.commonpath(event_files)
            alternatives = ",".join(os.path.relpath(f, root) for f in event_files)
            events = f"file({sql_str(root + '/{' + alternatives + '}')}, Parquet)"
        t0 = time.perf_counter()
        union = "SETTINGS schema_inference_mode = 'union'"
        if mode == "parquet":
            self.execute(f"CREATE VIEW contacts AS SELECT * FROM {contacts}")
            if events:
                self.execute(f"CREATE VIEW events AS SELECT * FROM {events} {union}")
        else:
            self.execute(
                f"CREATE TABLE contacts ENGINE = MergeTree ORDER BY contact_id AS SELECT * FROM {contacts}"
            )
            if events:
                self.execute(
                    "CREATE TABLE events ENGINE = MergeTree ORDER BY (type, contact_id, ts)"
                    f" AS SELECT * FROM {events} {union}"
                )
                self.execute("OPTIMIZE TABLE events FINAL")
        if not events:
            self.execute(
                "CREATE TABLE events (contact_id UInt64, ts DateTime64(6, 'UTC'), type String,"
                " operation_id Nullable(String), url Nullable(String), amount Nullable(Float64),"
                " name Nullable(String)) ENGINE = Memory"
            )
        return (time.perf_counter() - t0) * 1000.0 if mode == "tables" else None

    def execute(self, sql):
        self.session.query(sql)

    def rows(self, sql):
        out = str(self.session.query(sql, "TSV"))
        return [tuple(self.value(v) for v in line.split("\t")) for line in out.splitlines() if line]

    @staticmethod
    def value(v):
        return int(v) if re.fullmatch(r"-?\d+", v) else v

    def describe(self, table):
        return [(r[0], r[1]) for r in self.rows(f"DESCRIBE TABLE {table}")]

    def materialize(self, table, sql):
        self.execute(f"CREATE OR REPLACE TABLE {table} ENGINE = Memory AS {sql}")

    def materialize_empty(self, table):
        self.execute(f"CREATE OR REPLACE TABLE {table} (contact_id UInt64) ENGINE = Memory")

    def load_expected(self, members_file):
        # On disk, by segment: at 10M contacts the members of every segment
        # are hundreds of millions of rows.
        self.execute(
            "CREATE TABLE expected ENGINE = MergeTree ORDER BY (segment_id, contact_id)"
            " AS SELECT toLowCardinality(toString(segment_id)) AS segment_id,"
            f" toUInt64(contact_id) AS contact_id FROM file({sql_str(str(members_file))}, Parquet)"
        )

    def prepare_counts(self, tables, ids):
        """Each segment's members as one roaring bitmap (`groupBitmapState`)."""
        for s in dict.fromkeys([*NESTED, *ids]):
            if s in tables:
                self.materialize(
                    f"bm_{tables[s]}", f"SELECT groupBitmapState(contact_id) AS b FROM {tables[s]}"
                )

    def nested_count_sql(self, tables):
        subs, sms, active, bad, everyone = (f"(SELECT b FROM bm_{tables[s]})" for s in NESTED)
        return (
            "SELECT bitmapCardinality(bitmapAnd(bitmapAndnot(bitmapAnd("
            f"bitmapOr({subs}, {sms}), {active}), {bad}), {everyone}))"
        )

    def overlap_sql(self, tables, ids):
        bitmaps = " UNION ALL ".join(f"SELECT {i} AS i, b FROM bm_{tables[s]}" for i, s in enumerate(ids))
        return (
            f"WITH m AS ({bitmaps}) "
            "SELECT x.i, y.i, bitmapAndCardinality(x.b, y.b) FROM m AS x CROSS JOIN m AS y"
        )

    def collect(self, sql):
        self.materialize("sql_result", sql)
        return self.rows("SELECT count() FROM sql_result")[0][0]

    def to_parquet(self, source, kind, target):
        fmt = "CSVWithNames" if kind == "csv" else "Parquet"
        return (
            f"INSERT INTO FUNCTION file({sql_str(target)}, Parquet) SELECT * FROM file({sql_str(source)}, {fmt})"
            " SETTINGS engine_file_truncate_on_insert = 1"
        )


PEER_CLASSES = {"duckdb": DuckDB, "clickhouse": ClickHouse}
NESTED = ["email_subscribers", "sms_subscribers", "active_contacts", "email_bad_addresses", "all_contacts"]


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
    """Turns a criteria tree into a SQL boolean over one row of `contacts`,
    in one peer's dialect.

    Every expression it returns is TRUE or FALSE, never NULL, so that `not`
    is exact. Segment references read the table materialized for that
    segment; behaviour conditions are subqueries over `events`.
    """

    def __init__(self, dialect, contact_types, event_types, clock, segment_tables):
        self.d = dialect  # DuckDB or ClickHouse: how literals and functions are spelled
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
        empty = self.empty(ty, col)
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

    def text_op(self, op, value, case_sensitive, col, positive, negative):
        def fold(s):
            return s if case_sensitive else s.lower()

        text = col if case_sensitive else self.d.lower(col)
        if op in ("in", "not_in"):
            values = value if isinstance(value, list) else [value]
            cond = f"{text} IN {sql_list(fold(v) for v in values)}"
        else:
            v = sql_str(fold(value))
            # A negative operator is the negation of its positive twin.
            conditions = {
                ("eq", "neq"): f"{text} = {v}",
                ("starts_with", "not_starts_with"): self.d.starts_with(text, v),
                ("ends_with", "not_ends_with"): self.d.ends_with(text, v),
                ("contains", "not_contains"): self.d.contains(text, v),
            }
            cond = next((c for ops, c in conditions.items() if op in ops), None)
            if cond is None:
                raise ValueError(f"operator {op!r} does not apply to a text field")
        return negative(cond) if op in NEGATIVE_OPS else positive(cond)

    def tags_op(self, op, value, case_sensitive, col, empty, positive):
        values = value if isinstance(value, list) else [value]
        if case_sensitive:
            tags, wanted = col, sql_array(values)
        else:
            tags, wanted = self.d.lower_list(col), sql_array(v.lower() for v in values)
        if op == "contains_any":
            return positive(self.d.has_any(tags, wanted))
        if op == "contains_all":
            return positive(self.d.has_all(tags, wanted))
        if op == "contains_none":  # rule 5: matches empty tags
            return f"COALESCE({empty} OR NOT {self.d.has_any(tags, wanted)}, FALSE)"
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
            return positive(f"{col} BETWEEN {self.d.date(since)} AND {self.d.date(today)}")
        if op == "more_than_ago":
            until = today - dt.timedelta(days=duration_days(value))
            return positive(f"{col} < {self.d.date(until)}")
        if op == "anniversary_within":
            return positive(self.anniversary(f"{col}", value))
        if op == "between":
            lo, hi = (dt.date.fromisoformat(v) for v in value)
            return positive(f"{col} BETWEEN {self.d.date(lo)} AND {self.d.date(hi)}")
        d = self.d.date(dt.date.fromisoformat(value))
        cond = {"eq": f"{col} = {d}", "neq": f"{col} = {d}", "before": f"{col} < {d}", "after": f"{col} > {d}"}
        if op not in cond:
            raise ValueError(f"operator {op!r} does not apply to a date")
        return negative(cond[op]) if op == "neq" else positive(cond[op])

    def timestamp_op(self, op, value, col, positive, negative):
        clock = self.clock
        if op == "within_last":
            since = clock.ago(parse_duration(value))
            return positive(f"{col} > {self.d.ts(since)} AND {col} <= {self.d.ts(clock.as_of)}")
        if op == "more_than_ago":
            return positive(f"{col} <= {self.d.ts(clock.ago(parse_duration(value)))}")
        if op == "anniversary_within":
            local_day = self.d.local_time(col, clock.tz_name)
            return positive(self.anniversary(local_day, value))

        # The other operators compare the calendar day of the value, in the base's zone.
        def start(d):
            return self.d.ts(clock.day_start(d))

        def next_start(d):
            return self.d.ts(clock.day_start(d + dt.timedelta(days=1)))

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
        filters = [f"ts <= {self.d.ts(clock.as_of)}", f"type IN {sql_list(types)}"]
        if b.get("operation") is not None:
            ops = b["operation"] if isinstance(b["operation"], list) else [b["operation"]]
            filters.append(f"operation_id IN {sql_list(ops)}")
        for w in b.get("where") or []:
            filters.append(self.field(w, self.event_types))
        within = b.get("within")
        if isinstance(within, str):
            filters.append(f"ts > {self.d.ts(clock.ago(parse_duration(within)))}")
        elif isinstance(within, dict):
            if within.get("after") is not None:
                filters.append(f"ts >= {self.d.ts(self.bound(within['after']))}")
            if within.get("before") is not None:
                filters.append(f"ts < {self.d.ts(self.bound(within['before']))}")
        return filters

    def bound(self, s):
        """A window bound: a date is midnight of that day in the base's zone,
        a duration is as_of minus it."""
        d = parse_date(s)
        return self.clock.day_start(d) if d else self.clock.ago(parse_duration(s))

    def empty(self, ty, col):
        """A field is empty when it is null, or for text, the empty string
        (for tags: no value at all)."""
        if ty == "text":
            return f"({col} IS NULL OR {col} = '')"
        if ty == "tags":
            return f"({col} IS NULL OR {self.d.length(col)} = 0)"
        return f"({col} IS NULL)"

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


# Choice fields of the SPEC's recognised contact columns.
RECOGNISED_CHOICES = {"email_status", "sms_status"}


def column_types(peer, table, declared):
    """Field types of a table: inferred from the peer's column types, then
    overridden by the types the manifest declares (choice fields, tags)."""
    types = {}
    for name, peer_type in peer.describe(table):
        for pattern, ty in peer.TYPES:
            if re.match(pattern, peer_type):
                types[name] = ty
                break
        if name in RECOGNISED_CHOICES:
            types[name] = "choice"
    for f in declared:
        types[f["name"]] = f["type"]
    return types


# ---------------------------------------------------------------------------
# One set-up (a child process): a peer over views or tables


def time_runs(runs, fn, budget_s=None):
    """Milliseconds of `runs` runs of fn, after one warm-up run; with a
    budget, the runs stop once it is spent (at least one run)."""
    fn()
    out = []
    start = time.perf_counter()
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
        if budget_s is not None and time.perf_counter() - start > budget_s:
            break
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


def run_nightly(peer, plan):
    """Materialize every segment in order; returns {segment id: error}."""
    errors = {}
    for seg_id, table, sql, error in plan:
        if sql is not None:
            try:
                peer.materialize(table, sql)
                continue
            except Exception as e:  # a failing segment does not stop the others
                error = f"{type(e).__name__}: {e}"
        errors[seg_id] = error
        peer.materialize_empty(table)
    return errors


def compare_members(peer, plan, members_file, errors):
    """Per segment, the peer's members against bench-members.parquet;
    returns the list of differing segments. Each segment's count and sum of
    member hashes are compared first, in one pass over the expected
    members; the members themselves only where those differ."""
    peer.load_expected(members_file)
    fingerprint = f"count(*), sum({peer.hash('contact_id')})"
    expected = {
        str(r[0]): tuple(r[1:])
        for r in peer.rows(f"SELECT segment_id, {fingerprint} FROM expected GROUP BY segment_id")
    }
    mismatches = []
    for seg_id, table, _, _ in plan:
        ours = tuple(peer.rows(f"SELECT {fingerprint} FROM {table}")[0])
        if seg_id not in errors and (ours == expected.get(seg_id) or (ours[0] == 0 and seg_id not in expected)):
            continue
        theirs = f"SELECT contact_id FROM expected WHERE segment_id = {sql_str(seg_id)}"
        ours = f"SELECT contact_id FROM {table}"

        def difference(a, b):
            only = f"(SELECT contact_id FROM ({a}) EXCEPT SELECT contact_id FROM ({b}))"
            n = peer.rows(f"SELECT count(*) FROM {only} AS d")[0][0]
            first = peer.rows(f"SELECT contact_id FROM {only} AS d ORDER BY contact_id LIMIT 5") if n else []
            return n, [r[0] for r in first]

        only_peer, first_peer = difference(ours, theirs)
        only_segments, first_segments = difference(theirs, ours)
        if only_peer or only_segments or seg_id in errors:
            mismatches.append(
                {
                    "segment": seg_id,
                    "peer_count": peer.rows(f"SELECT count(*) FROM {table}")[0][0],
                    "segments_count": peer.rows(f"SELECT count(*) FROM ({theirs}) AS t")[0][0],
                    "only_in_peer": only_peer,
                    "only_in_peer_first": first_peer,
                    "only_in_segments": only_segments,
                    "only_in_segments_first": first_segments,
                    "error": errors.get(seg_id),
                }
            )
    return mismatches


def overlap_matrix(peer, sql, n):
    matrix = [[0] * n for _ in range(n)]
    for i, j, c in peer.rows(sql):
        matrix[int(i)][int(j)] = int(c)
    return matrix


def run_mode(args):
    """Everything one set-up does; writes its figures to args.result."""
    peer_name, mode = args.mode.split("-")
    peer = PEER_CLASSES[peer_name]()
    base = Path(args.base)
    bench = json.loads((base / "bench-segments.json").read_text())
    report = read_report(base)
    manifest = latest_manifest(base)
    load_ms = peer.open(*data_files(base, manifest), mode, args.threads)
    clock = Clock(bench["as_of"], bench.get("time_zone"))
    translator = Translator(
        peer,
        column_types(peer, "contacts", manifest.get("fields", [])),
        column_types(peer, "events", manifest.get("event_columns", [])),
        clock,
        {},
    )
    plan = translate_all(bench["segments"], translator)
    log(f"[{args.mode}] nightly: {len(plan)} segments")
    errors = {}
    nightly_runs = time_runs(args.runs, lambda: errors.update(run_nightly(peer, plan)))
    out = {
        "mode": args.mode,
        "version": peer.version,
        "threads": args.threads,
        "load_ms": load_ms,
        "nightly": summary(nightly_runs, peak_rss_mb=peak_rss_mb(), segments=len(plan)),
        "sql": {seg_id: sql for seg_id, _, sql, _ in plan},
    }

    log(f"[{args.mode}] checking members against bench-members.parquet")
    out["mismatches"] = compare_members(peer, plan, base / "bench-members.parquet", errors)

    out["previews"] = {}
    for p in report.get("preview_segments", []):
        sql = translator.count_query(p["criteria"])
        count = peer.rows(sql)[0][0]
        runs = time_runs(args.runs, lambda: peer.rows(sql))
        out["previews"][p["id"]] = summary(runs, count=count)

    tables = translator.segment_tables
    ov = report.get("overlap") or {}
    ids = [s for s in ov.get("segments") or [] if s in tables]
    peer.prepare_counts(tables, ids)
    if all(s in tables for s in NESTED):
        sql = peer.nested_count_sql(tables)
        count = peer.rows(sql)[0][0]
        runs = time_runs(max(args.runs, 5) * 20, lambda: peer.rows(sql), budget_s=10)
        out["nested_count"] = summary(runs, count=count)

    if ids and len(ids) == len(ov["segments"]):
        sql = peer.overlap_sql(tables, ids)
        matrix = overlap_matrix(peer, sql, len(ids))
        runs = time_runs(max(args.runs, 5) * 4, lambda: peer.rows(sql), budget_s=20)
        out["overlap"] = summary(runs, same=matrix == ov.get("matrix"))

    out["sql_queries"] = {}
    for q in report.get("sql_queries", []):
        standard = q.get("peers") or q["duckdb"]  # the key of reports written before ClickHouse
        sql = re.sub(r"\{seg:([^}]+)\}", lambda m: tables[m.group(1)], standard)
        rows = peer.collect(sql)
        runs = time_runs(args.runs, lambda: peer.collect(sql))
        out["sql_queries"][q["name"]] = summary(runs, rows=rows)
    Path(args.result).write_text(json.dumps(out, indent=1, default=str))


# ---------------------------------------------------------------------------
# Import (in a child process of its own per peer)


def resolve(base, path):
    p = Path(path)
    return p if p.is_absolute() or not (base / p).exists() else base / p


def run_imports(args):
    """One peer turning the bench's import files into Parquet."""
    peer = PEER_CLASSES[args.imports]()
    base = Path(args.base)
    info = read_report(base).get("import") or {}
    jobs = [
        ("import:contacts-csv", info.get("contacts_csv"), info.get("contacts_rows"), "csv"),
        ("import:events-parquet", info.get("events_parquet"), info.get("events_rows"), "parquet"),
    ]
    out = {}
    peer.open(*data_files(base, latest_manifest(base)), "parquet", args.threads)
    with tempfile.TemporaryDirectory(prefix="peer-import-", dir=base) as scratch:
        target = str(Path(scratch) / "x.parquet")
        for name, path, rows, kind in jobs:
            if not path:
                continue
            sql = peer.to_parquet(str(resolve(base, path)), kind, target)
            runs = time_runs(args.runs, lambda: peer.execute(sql))
            med = statistics.median(runs)
            out[name] = summary(runs, rows=rows, rows_per_s=(rows or 0) / med * 1000.0 if med else None)
    Path(args.result).write_text(json.dumps(out, indent=1, default=str))


# ---------------------------------------------------------------------------
# Report


def read_report(base):
    path = base / "bench-report.json"
    return json.loads(path.read_text()) if path.exists() else {}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run_child(args, option, value):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = f.name
    try:
        cmd = [
            sys.executable, os.path.abspath(__file__), "--base", str(args.base),
            "--runs", str(args.runs), "--threads", str(args.threads),
            option, value, "--result", result,
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


def comparison_rows(report, setups, imports):
    """(workload, segments ms, {set-up: ms}) for every workload."""
    ours = {w["name"]: w.get("median_ms") for w in report.get("workloads", [])}

    def each(get):
        out = {}
        for name, figures in setups.items():
            try:
                out[name] = get(figures)
            except (KeyError, TypeError):
                out[name] = None
        return out

    rows = [("nightly", ours.get("nightly"), each(lambda f: f["nightly"]["median_ms"]))]
    for p in report.get("preview_segments", []):
        name = f"preview:{p['id']}"
        rows.append((name, ours.get(name), each(lambda f, i=p["id"]: f["previews"][i]["median_ms"])))
    rows.append(("nested-count", ours.get("nested-count"), each(lambda f: f["nested_count"]["median_ms"])))
    rows.append(("overlap", ours.get("overlap"), each(lambda f: f["overlap"]["median_ms"])))
    for q in report.get("sql_queries", []):
        name = f"sql:{q['name']}"
        rows.append((name, ours.get(name), each(lambda f, n=q["name"]: f["sql_queries"][n]["median_ms"])))
    for name in dict.fromkeys(k for figures in imports.values() for k in figures):
        peers = {s: imports.get(s.split("-")[0], {}).get(name, {}).get("median_ms") for s in setups if s.endswith("-parquet")}
        rows.append((name, ours.get(name), peers))
    rows.append(("load into tables", None, {s: f.get("load_ms") for s, f in setups.items()}))
    return [r for r in rows if r[1] is not None or any(v is not None for v in r[2].values())]


def best(peers):
    """The fastest set-up of a row: (name, ms)."""
    known = [(v, k) for k, v in peers.items() if v is not None]
    return min(known)[::-1] if known else (None, None)


def print_table(rows, report, setups):
    names = list(setups)
    header = ("workload", "segments ms", *(f"{n} ms" for n in names), "fastest peer", "seg/fastest")
    lines = [header]
    for w, s, peers in rows:
        who, fastest = best(peers) if w != "load into tables" else (None, None)
        lines.append((w, ms(s), *(ms(peers.get(n)) for n in names), who or "-", ratio(s, fastest)))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for k, line in enumerate(lines):
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
        if k == 0:
            print("  ".join("-" * w for w in widths))
    ours = {w["name"]: w for w in report.get("workloads", [])}
    rss = ours.get("nightly", {}).get("peak_rss_mb")
    peaks = ", ".join(f"{n} {ms(f['nightly'].get('peak_rss_mb'))}" for n, f in setups.items())
    print(f"\npeak RSS (MiB) after nightly: segments {ms(rss)}, {peaks}")
    print("ratios below 1 mean segments is faster.")


def count_checks(report, setups):
    """Preview and nested-count results against the counts in the notes of
    bench-report.json ("N contacts", "... = N"), when they can be read."""
    problems = []
    notes = {w["name"]: w.get("note", "") for w in report.get("workloads", [])}
    for setup, figures in setups.items():
        for pid, fig in figures["previews"].items():
            m = re.match(r"^(\d+) contacts", notes.get(f"preview:{pid}", ""))
            if m and int(m.group(1)) != fig["count"]:
                problems.append(f"[{setup}] preview:{pid}: {fig['count']}, segments {m.group(1)}")
        ov = figures.get("overlap")
        if ov and not ov["same"]:
            problems.append(f"[{setup}] overlap: the matrix differs from ours")
        nested = figures.get("nested_count")
        m = re.search(r"= (\d+)$", notes.get("nested-count", ""))
        if nested and m and int(m.group(1)) != nested["count"]:
            problems.append(f"[{setup}] nested-count: {nested['count']}, segments {m.group(1)}")
    return problems


def print_mismatches(setups):
    bad = False
    for setup, figures in setups.items():
        for mm in figures["mismatches"]:
            bad = True
            print(
                f"MISMATCH [{setup}] {mm['segment']}: {mm['peer_count']}, segments {mm['segments_count']};"
                f" only in {setup} {mm['only_in_peer']} {mm['only_in_peer_first']},"
                f" only in segments {mm['only_in_segments']} {mm['only_in_segments_first']}"
                + (f"; {mm['error']}" if mm["error"] else "")
            )
            print(f"  sql: {figures['sql'].get(mm['segment'])}")
    return bad


def names_of(text, allowed, option):
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in allowed:
            raise SystemExit(f"{option}: {n!r} is not one of {', '.join(allowed)}")
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, type=Path, help="a base of `segments bench` (DIR/base-NxK)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per workload, after a warm-up")
    parser.add_argument("--threads", type=int, default=2, help="threads of each peer")
    parser.add_argument("--peers", default=",".join(PEERS), help="peers to run (duckdb,clickhouse)")
    parser.add_argument("--modes", default=",".join(MODES), help="set-ups of each peer (parquet,tables)")
    setup_names = [f"{p}-{m}" for p in PEERS for m in MODES]
    parser.add_argument("--mode", choices=setup_names, help=argparse.SUPPRESS)  # internal: one child
    parser.add_argument("--imports", choices=PEERS, help=argparse.SUPPRESS)  # internal: one child
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.base = args.base.resolve()
    if args.mode:
        run_mode(args)
        return 0
    if args.imports:
        run_imports(args)
        return 0

    for name in ("bench-segments.json", "bench-members.parquet"):
        if not (args.base / name).exists():
            raise SystemExit(f"{args.base / name} is missing: run `segments bench` first")
    peers = names_of(args.peers, PEERS, "--peers")
    modes = names_of(args.modes, MODES, "--modes")
    report = read_report(args.base)
    setups = {f"{p}-{m}": run_child(args, "--mode", f"{p}-{m}") for p in peers for m in modes}
    imports = {}
    if report.get("import"):
        for p in peers:
            log(f"[{p}] import")
            imports[p] = run_child(args, "--imports", p)

    rows = comparison_rows(report, setups, imports)
    versions = ", ".join(dict.fromkeys(f"{s.split('-')[0]} {f['version']}" for s, f in setups.items()))
    segments = next(iter(setups.values()))["nightly"]["segments"]
    print(f"\nbase {args.base}: {report.get('contacts', '?')} contacts, {report.get('events', '?')} events,"
          f" {segments} segments; {versions}; {args.threads} threads, median of {args.runs} runs\n")
    print_table(rows, report, setups)
    bad = print_mismatches(setups)
    problems = count_checks(report, setups)
    for p in problems:
        print(f"MISMATCH {p}")
    if not bad and not problems:
        print(f"all {segments} segments have the same members in {', '.join(setups)}")

    out = {
        "base": str(args.base),
        "versions": {s.split("-")[0]: f["version"] for s, f in setups.items()},
        "threads": args.threads,
        "runs": args.runs,
        "contacts": report.get("contacts"),
        "events": report.get("events"),
        "workloads": [
            {"name": w, "segments_median_ms": s, "peers_median_ms": peers,
             "fastest_peer": best(peers)[0],
             "ratio_segments_over_fastest": s / best(peers)[1] if s and best(peers)[1] else None}
            for w, s, peers in rows
        ],
        "setups": setups,
        "imports": imports,
        "count_mismatches": problems,
        "ok": not bad and not problems,
    }
    path = args.base / "peers-report.json"
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"report: {path}")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
