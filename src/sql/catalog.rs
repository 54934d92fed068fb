//! What PostgreSQL clients ask of the server besides their queries, on top
//! of the `pg_catalog` of datafusion-postgres: `version()` in PostgreSQL's
//! form, `current_user` as the user logged in, and the functions that
//! SQLAlchemy's inspector, psycopg and JDBC's `DatabaseMetaData` call.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int32Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, GroupByExpr, Query, Select, SelectItem, SetExpr, Statement, TableFactor,
    Visit, VisitMut, visit_expressions, visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use std::ops::ControlFlow;

/// The PostgreSQL version the server speaks as (`server_version`, and the
/// number `version()` begins with): clients and BI tools read it to choose
/// their dialect.
pub const SERVER_VERSION: &str = "16.6";

/// `SHOW server_version` and `SHOW server_version_num`: (column, value).
pub fn shown_version(stmt: &Statement) -> Option<(&'static str, String)> {
    let Statement::ShowVariable { variable } = stmt else {
        return None;
    };
    let [name] = variable.as_slice() else {
        return None;
    };
    match name.value.to_lowercase().as_str() {
        "server_version" => Some(("server_version", SERVER_VERSION.to_string())),
        "server_version_num" => {
            let (major, minor) = SERVER_VERSION
                .split_once('.')
                .unwrap_or((SERVER_VERSION, "0"));
            let (major, minor) = (major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?);
            Some(("server_version_num", (major * 10_000 + minor).to_string()))
        }
        _ => None,
    }
}

/// Register the functions on a session that already has `pg_catalog`.
pub fn register(ctx: &SessionContext, user: &str) {
    ctx.register_udf(constant_text("version", version_text()));
    // `current_user` and `user` are planned as `session_user`.
    ctx.register_udf(constant_text("session_user", user.to_string()));
    ctx.register_udf(to_regtype());
    ctx.register_udf(json_build_object());
    ctx.register_udf(create_udf(
        "pg_get_serial_sequence",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        // No column owns a sequence.
        Arc::new(|args: &[ColumnarValue]| {
            let rows = rows_of(args);
            Ok(ColumnarValue::Array(Arc::new(StringArray::new_null(rows))))
        }),
    ));
    ctx.register_udf(create_udf(
        "pg_collation_is_visible",
        vec![DataType::Int32],
        DataType::Boolean,
        Volatility::Stable,
        // The catalog's collations are all in `pg_catalog`.
        Arc::new(|args: &[ColumnarValue]| {
            let rows = rows_of(args);
            Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(vec![
                true;
                rows
            ]))))
        }),
    ));
}

/// Rows of a call's batch (1 when every argument is a constant).
fn rows_of(args: &[ColumnarValue]) -> usize {
    args.iter()
        .find_map(|a| match a {
            ColumnarValue::Array(a) => Some(a.len()),
            ColumnarValue::Scalar(_) => None,
        })
        .unwrap_or(1)
}

/// `version()` as PostgreSQL writes it, with what answers behind it.
pub fn version_text() -> String {
    format!(
        "PostgreSQL {SERVER_VERSION} (segments {}, Apache DataFusion {}) on {}-{}",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION,
        std::env::consts::ARCH,
        std::env::consts::OS
    )
}

/// A function of no arguments that answers a constant text.
fn constant_text(name: &str, text: String) -> ScalarUDF {
    create_udf(
        name,
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_| {
            Ok(ColumnarValue::Scalar(
                datafusion::common::ScalarValue::Utf8(Some(text.clone())),
            ))
        }),
    )
}

/// `to_regtype(name)`: the OID of a built-in type by its name or alias
/// (they are fixed in PostgreSQL), NULL for any other, as for a type that
/// is not installed (clients ask for `hstore` this way).
fn to_regtype() -> ScalarUDF {
    const TYPES: &[(&str, i32)] = &[
        ("bool", 16),
        ("boolean", 16),
        ("bytea", 17),
        ("char", 18),
        ("name", 19),
        ("int8", 20),
        ("bigint", 20),
        ("int2", 21),
        ("smallint", 21),
        ("int4", 23),
        ("integer", 23),
        ("int", 23),
        ("text", 25),
        ("oid", 26),
        ("json", 114),
        ("float4", 700),
        ("real", 700),
        ("float8", 701),
        ("double precision", 701),
        ("bpchar", 1042),
        ("character", 1042),
        ("varchar", 1043),
        ("character varying", 1043),
        ("date", 1082),
        ("time", 1083),
        ("timestamp", 1114),
        ("timestamp without time zone", 1114),
        ("timestamptz", 1184),
        ("timestamp with time zone", 1184),
        ("interval", 1186),
        ("numeric", 1700),
        ("uuid", 2950),
        ("jsonb", 3802),
    ];
    let lookup = |name: &str| {
        let name = name.trim().trim_start_matches("pg_catalog.").to_lowercase();
        TYPES.iter().find(|(n, _)| *n == name).map(|(_, oid)| *oid)
    };
    create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let names = ColumnarValue::values_to_arrays(args)?;
            let names = names[0].as_string::<i32>();
            let oids: Int32Array = (0..names.len())
                .map(|i| {
                    (!names.is_null(i))
                        .then(|| lookup(names.value(i)))
                        .flatten()
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(oids)))
        }),
    )
}

/// `json_build_object(key, value, ...)`: a JSON object as text.
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: datafusion::logical_expr::Signature,
}

impl datafusion::logical_expr::ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }
    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        if args.args.len() % 2 == 1 {
            return Err(datafusion::error::DataFusionError::Plan(
                "json_build_object takes keys and values in pairs".into(),
            ));
        }
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.to_array(args.number_rows))
            .collect::<datafusion::error::Result<_>>()?;
        let texts: Vec<ArrayRef> = arrays
            .iter()
            .map(|a| datafusion::arrow::compute::cast(a, &DataType::Utf8))
            .collect::<std::result::Result<_, _>>()?;
        let objects: StringArray = (0..args.number_rows)
            .map(|row| {
                let mut object = serde_json::Map::new();
                for pair in arrays.chunks(2).zip(texts.chunks(2)) {
                    let ([_, value], [key, text]) = (pair.0, pair.1) else {
                        continue;
                    };
                    let key = key.as_string::<i32>();
                    let text = text.as_string::<i32>();
                    let json = if value.is_null(row) {
                        serde_json::Value::Null
                    } else if matches!(value.data_type(), DataType::Boolean) {
                        serde_json::Value::Bool(value.as_boolean().value(row))
                    } else if value.data_type().is_numeric() {
                        serde_json::from_str(text.value(row))
                            .unwrap_or_else(|_| serde_json::Value::String(text.value(row).into()))
                    } else {
                        serde_json::Value::String(text.value(row).into())
                    };
                    let name = if key.is_null(row) { "" } else { key.value(row) };
                    object.insert(name.to_string(), json);
                }
                Some(serde_json::Value::Object(object).to_string())
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(objects)))
    }
}

fn json_build_object() -> ScalarUDF {
    ScalarUDF::new_from_impl(JsonBuildObject {
        signature: datafusion::logical_expr::Signature::variadic_any(Volatility::Immutable),
    })
}

/// Aggregate functions, by name: a scalar subquery that calls one already
/// returns one row.
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "first_value",
    "last_value",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
];

/// A statement as DataFusion plans it, where PostgreSQL clients write what
/// DataFusion does not decorrelate (SQLAlchemy's inspector does, for
/// columns): a scalar subquery that aggregates nothing takes the first of
/// its rows (PostgreSQL fails when there are several; catalog lookups have
/// at most one), and the conditions of its `WHERE` that read only columns
/// of the outer query move out of it, as `CASE WHEN condition THEN
/// (subquery) END`. Other statements are returned as they are.
pub fn for_datafusion(stmt: &Statement) -> std::borrow::Cow<'_, Statement> {
    let mut any = false;
    each_expression(stmt, &mut |e| {
        any |= matches!(e, Expr::Subquery(_));
        ControlFlow::<()>::Continue(())
    });
    if !any {
        return std::borrow::Cow::Borrowed(stmt);
    }
    let mut out = stmt.clone();
    each_expression_mut(&mut out, &mut |e| {
        if let Expr::Subquery(q) = e
            && let Some(rewritten) = first_row(q)
        {
            *e = rewritten;
        }
        ControlFlow::<()>::Continue(())
    });
    std::borrow::Cow::Owned(out)
}

/// The rewriting of one scalar subquery (None: left as it is). When its
/// value also reads the outer query (`json_build_object('always',
/// outer.x = 'a', 'start', inner.y)`), each column of its own relations is
/// read by a subquery of its own and the value is computed outside, when
/// a row exists: `CASE WHEN (SELECT count(1) ...) > 0 THEN
/// json_build_object('always', outer.x = 'a', 'start', (SELECT
/// first_value(inner.y) ...)) END`.
fn first_row(q: &Query) -> Option<Expr> {
    let SetExpr::Select(select) = q.body.as_ref() else {
        return None;
    };
    let [item] = select.projection.as_slice() else {
        return None;
    };
    let value = match item {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
        _ => return None,
    };
    let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(g, _) if g.is_empty());
    if grouped || select.having.is_some() || aggregates(value) {
        return None;
    }
    let names = relation_names(select);
    let (outer, inner): (Vec<&Expr>, Vec<&Expr>) = select
        .selection
        .as_ref()
        .map(conjuncts)
        .unwrap_or_default()
        .into_iter()
        .partition(|c| only_outer(c, &names));
    let mut sub = select.as_ref().clone();
    sub.selection = match inner.as_slice() {
        [] => None,
        inner => Some(parse(&and(inner))?),
    };
    let selecting = |e: String| -> Option<Query> {
        let mut s = sub.clone();
        s.projection = vec![SelectItem::UnnamedExpr(parse(&e)?)];
        let mut query = q.clone();
        query.body = Box::new(SetExpr::Select(Box::new(s)));
        Some(query)
    };
    let rewritten = if reads_outer(value, &names) {
        let mut value = value.clone();
        let mut failed = false;
        each_expression_mut(&mut value, &mut |e| {
            let own = match e {
                Expr::Identifier(_) => true,
                Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                    names.contains(&parts[parts.len() - 2].value.to_lowercase())
                }
                _ => false,
            };
            if own {
                match selecting(format!("first_value({e})")) {
                    Some(query) => *e = Expr::Subquery(Box::new(query)),
                    None => failed = true,
                }
            }
            ControlFlow::<()>::Continue(())
        });
        if failed {
            return None;
        }
        // DataFusion plans no EXISTS outside WHERE: rows are counted.
        let rows = selecting("count(1)".into())?;
        parse(&format!("CASE WHEN ({rows}) > 0 THEN {value} END"))?
    } else {
        Expr::Subquery(Box::new(selecting(format!("first_value({value})"))?))
    };
    if outer.is_empty() {
        return Some(rewritten);
    }
    parse(&format!("CASE WHEN {} THEN {rewritten} END", and(&outer)))
}

/// Conditions joined by AND.
fn and(conditions: &[&Expr]) -> String {
    conditions
        .iter()
        .map(|c| format!("({c})"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Whether an expression reads a qualified column of a relation other
/// than `names`.
fn reads_outer(e: &Expr, names: &[String]) -> bool {
    let mut found = false;
    each_expression(e, &mut |x| {
        if let Expr::CompoundIdentifier(parts) = x
            && parts.len() >= 2
        {
            found |= !names.contains(&parts[parts.len() - 2].value.to_lowercase());
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

fn parse(sql: &str) -> Option<Expr> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .ok()?
        .parse_expr()
        .ok()
}

fn conjuncts(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            let mut out = conjuncts(left);
            out.extend(conjuncts(right));
            out
        }
        Expr::Nested(inner) => conjuncts(inner),
        e => vec![e],
    }
}

/// Whether an expression calls an aggregate function.
fn aggregates(e: &Expr) -> bool {
    let mut found = false;
    each_expression(e, &mut |x| {
        if let Expr::Function(f) = x {
            let name = f.name.to_string().to_lowercase();
            let name = name.rsplit('.').next().unwrap_or_default();
            found |= AGGREGATES.contains(&name);
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

/// Calls `f` on every expression under `node`, outermost first, until it
/// breaks. Every walk of this module goes through here or
/// [`each_expression_mut`] with its closure behind one `dyn` type:
/// sqlparser's visitor is generic over the closure, and each closure of
/// its own compiled the walk of every type of the syntax tree again.
fn each_expression<V: Visit>(node: &V, f: &mut dyn FnMut(&Expr) -> ControlFlow<()>) {
    let _ = visit_expressions(node, f);
}

/// [`each_expression`], with the expressions open to rewriting.
fn each_expression_mut<V: VisitMut>(node: &mut V, f: &mut dyn FnMut(&mut Expr) -> ControlFlow<()>) {
    let _ = visit_expressions_mut(node, f);
}

/// The names and aliases of the relations a `SELECT` reads, lowercased.
fn relation_names(select: &Select) -> Vec<String> {
    let mut names = Vec::new();
    let mut add = |t: &TableFactor| {
        if let TableFactor::Table { name, alias, .. } = t {
            if let Some(last) = name.0.last() {
                names.push(last.to_string().to_lowercase());
            }
            if let Some(a) = alias {
                names.push(a.name.value.to_lowercase());
            }
        }
    };
    for t in &select.from {
        add(&t.relation);
        for j in &t.joins {
            add(&j.relation);
        }
    }
    names
}

/// Whether a condition reads only qualified columns of relations other than
/// `names` (the outer query's), and no subquery.
fn only_outer(e: &Expr, names: &[String]) -> bool {
    let (mut outer, mut other) = (0, 0);
    each_expression(e, &mut |x| {
        match x {
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                let qualifier = parts[parts.len() - 2].value.to_lowercase();
                if names.contains(&qualifier) {
                    other += 1;
                } else {
                    outer += 1;
                }
            }
            Expr::Identifier(_)
            | Expr::CompoundIdentifier(_)
            | Expr::Subquery(_)
            | Expr::Exists { .. }
            | Expr::InSubquery { .. } => other += 1,
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    outer > 0 && other == 0
}
