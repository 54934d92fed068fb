#!/usr/bin/env python3
"""The overlap matrix of `segments bench --workloads nightly,overlap` in
DuckDB and in ClickHouse (chDB, in-process), from the members our engine
computed (`bench-members.parquet`: segment_id, contact_id).

Each engine first loads the members into its own table (load time reported
apart), then computes every pairwise intersection count of the workload's
segments with one self-join; the matrix must equal ours
(`bench-report.json`, "overlap"). Timings are medians after one warm-up run.

Usage:
    pip install duckdb chdb
    python3 benches/overlap_compare.py --base DIR/base-NxK [--runs 20]
"""

import argparse
import json
import statistics
import time
from pathlib import Path


def timed(runs, f):
    f()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        out.append((time.perf_counter() - t) * 1000)
    return out


def p99(runs):
    s = sorted(runs)
    return s[max(0, -(-len(s) * 99 // 100) - 1)]


def matrix_of(rows, ids):
    index = {s: i for i, s in enumerate(ids)}
    m = [[0] * len(ids) for _ in ids]
    for a, b, c in rows:
        m[index[a]][index[b]] = int(c)
    return m


def in_list(ids):
    return ", ".join("'" + s.replace("'", "''") + "'" for s in ids)


def duckdb_overlap(members, ids, runs):
    import duckdb

    con = duckdb.connect()
    t = time.perf_counter()
    con.execute(
        f"CREATE TABLE members AS SELECT CAST(segment_id AS VARCHAR) AS segment_id, contact_id "
        f"FROM read_parquet('{members}') WHERE segment_id IN ({in_list(ids)})"
    )
    load = (time.perf_counter() - t) * 1000
    sql = (
        "SELECT a.segment_id, b.segment_id, count(*) FROM members a JOIN members b USING (contact_id) "
        "GROUP BY a.segment_id, b.segment_id"
    )
    matrix = matrix_of(con.execute(sql).fetchall(), ids)
    return load, timed(runs, lambda: con.execute(sql).fetchall()), matrix


def clickhouse_overlap(members, ids, runs):
    from chdb import session

    s = session.Session()
    t = time.perf_counter()
    s.query("CREATE DATABASE IF NOT EXISTS bench")
    s.query(
        "CREATE TABLE bench.members (segment_id LowCardinality(String), contact_id UInt64) "
        "ENGINE = MergeTree ORDER BY (segment_id, contact_id)"
    )
    s.query(
        f"INSERT INTO bench.members SELECT toString(segment_id), contact_id "
        f"FROM file('{members}', Parquet) WHERE toString(segment_id) IN ({in_list(ids)})"
    )
    load = (time.perf_counter() - t) * 1000
    sql = (
        "SELECT a.segment_id, b.segment_id, count() FROM bench.members a "
        "INNER JOIN bench.members b USING (contact_id) GROUP BY a.segment_id, b.segment_id FORMAT TSV"
    )

    def run():
        return str(s.query(sql))

    rows = [line.split("\t") for line in run().strip().splitlines()]
    matrix = matrix_of(rows, ids)
    return load, timed(runs, run), matrix


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    base = Path(args.base)
    report = json.loads((base / "bench-report.json").read_text())
    ov = report.get("overlap") or {}
    ids, ours = ov.get("segments"), ov.get("matrix")
    if not ids:
        raise SystemExit("no overlap in bench-report.json: run `segments bench --workloads nightly,overlap`")
    mine = next(w for w in report["workloads"] if w["name"] == "overlap")
    members = base / "bench-members.parquet"
    print(f"{len(ids)}×{len(ids)} overlap, {report['contacts']} contacts")
    print(f"{'engine':<12} {'median ms':>10} {'p99 ms':>8} {'load ms':>9} {'same':>5} {'segments/engine':>16}")
    print(f"{'segments':<12} {mine['median_ms']:>10.2f} {p99(mine['runs_ms']):>8.2f} {'-':>9} {'-':>5} {'-':>16}")
    bad = False
    for name, f in (("duckdb", duckdb_overlap), ("clickhouse", clickhouse_overlap)):
        load, runs, matrix = f(members, ids, args.runs)
        med = statistics.median(runs)
        same = matrix == ours
        bad |= not same
        print(f"{name:<12} {med:>10.2f} {p99(runs):>8.2f} {load:>9.0f} {str(same):>5} {mine['median_ms'] / med:>16.4f}")
    if bad:
        raise SystemExit("MISMATCH: an engine's matrix differs from ours")


if __name__ == "__main__":
    main()
