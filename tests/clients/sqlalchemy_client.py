"""A BI client's first steps against `segments serve`, as SQLAlchemy 2 with
psycopg 3 and pandas take them: connect (the dialect reads `version()`),
inspect tables, views and columns, read a query with a bound parameter,
and use a savepoint. Prints what it saw as one JSON document.

Usage: sqlalchemy_client.py PORT PASSWORD
"""

import json
import sys

import pandas as pd
import sqlalchemy as sa

port, password = sys.argv[1], sys.argv[2]
engine = sa.create_engine(
    f"postgresql+psycopg://segments:{password}@127.0.0.1:{port}/segments"
)
seen = {}
with engine.connect() as conn:
    seen["server_version_info"] = list(conn.dialect.server_version_info)
    seen["version"] = conn.execute(sa.text("SELECT version()")).scalar()
    seen["current_user"] = conn.execute(sa.text("SELECT current_user")).scalar()
    conn.rollback()
    # A savepoint, rolled back, inside a transaction that goes on.
    with conn.begin():
        nested = conn.begin_nested()
        conn.execute(sa.text("SELECT count(*) FROM contacts")).scalar()
        nested.rollback()
        seen["after_savepoint"] = conn.execute(
            sa.text("SELECT count(*) FROM contacts")
        ).scalar()
inspector = sa.inspect(engine)
seen["tables"] = sorted(inspector.get_table_names())
seen["views"] = sorted(inspector.get_view_names())
seen["columns"] = {
    name: [[c["name"], str(c["type"])] for c in inspector.get_columns(name)]
    for name in seen["tables"] + seen["views"]
}
frame = pd.read_sql(
    sa.text(
        "SELECT contact_id, city FROM contacts WHERE score > :s ORDER BY contact_id"
    ),
    engine,
    params={"s": 100},
)
seen["rows"] = [[int(r.contact_id), r.city] for r in frame.itertuples()]
# A statement over the connection's timeout is cancelled; the next runs.
with engine.connect() as conn:
    conn.execute(sa.text("SET statement_timeout = '300ms'"))
    try:
        conn.execute(
            sa.text("SELECT count(*) FROM generate_series(1, 5000000000) WHERE value > :v"),
            {"v": 0},
        ).scalar()
        seen["timeout"] = "not cancelled"
    except sa.exc.DBAPIError as e:
        seen["timeout"] = str(e.orig)
        conn.rollback()
    seen["after_timeout"] = conn.execute(sa.text("SELECT count(*) FROM contacts")).scalar()
print(json.dumps(seen))
