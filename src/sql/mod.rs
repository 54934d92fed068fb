//! Read-only SQL over a snapshot: the guard that refuses writes and file
//! access, shared by `segments sql` and the `query` criterion.

mod catalog;
pub mod serve;
pub mod tls;

use crate::engine::guard::guarded;
use crate::engine::tables;
use crate::error::Result;

/// Run a read-only query over a snapshot and collect the rows.
pub async fn run_query(
    snap: &crate::base::Snapshot,
    sql: &str,
) -> Result<Vec<datafusion::arrow::array::RecordBatch>> {
    Ok(query(snap, sql).await?.1)
}

/// Run a read-only query over a snapshot: the schema of its result and the
/// rows.
pub async fn query(
    snap: &crate::base::Snapshot,
    sql: &str,
) -> Result<(
    datafusion::arrow::datatypes::SchemaRef,
    Vec<datafusion::arrow::array::RecordBatch>,
)> {
    let ctx = tables::user_context(&snap.base, &snap.manifest)?;
    let df = guarded(&ctx, sql).await?;
    let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
    let rows = df
        .collect()
        .await
        .map_err(|e| crate::base::check::name_damaged_file(snap.dir(), &snap.manifest, e.into()))?;
    Ok((schema, rows))
}

/// The tables a query can read, with their columns, in name order.
pub async fn describe_tables(
    snap: &crate::base::Snapshot,
) -> Result<Vec<(String, datafusion::arrow::datatypes::SchemaRef)>> {
    let ctx = tables::user_context(&snap.base, &snap.manifest)?;
    let mut names: Vec<String> = ctx
        .catalog("datafusion")
        .and_then(|c| c.schema("public"))
        .map(|s| s.table_names())
        .unwrap_or_default();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let provider = ctx.table_provider(name.as_str()).await?;
        out.push((name, provider.schema()));
    }
    Ok(out)
}

/// Cut SQL text into complete statements (each ending with `;`, which is
/// dropped) and the incomplete rest. Semicolons inside quotes, quoted
/// identifiers and comments do not end a statement.
pub fn split_statements(text: &str) -> (Vec<String>, String) {
    let bytes = text.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            q @ (b'\'' | b'"') => {
                // A quote is escaped by doubling it, which reads as two strings.
                i = bytes[i + 1..]
                    .iter()
                    .position(|&b| b == q)
                    .map_or(bytes.len(), |p| i + 1 + p + 1);
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = bytes[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |p| i + p + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = text[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |p| i + 2 + p + 2);
            }
            b';' => {
                let s = text[start..i].trim();
                if !s.is_empty() {
                    statements.push(s.to_string());
                }
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    (statements, text[start.min(text.len())..].to_string())
}

/// Whether SQL text holds nothing but blanks and comments.
pub fn is_blank(text: &str) -> bool {
    let mut rest = text.trim_start();
    loop {
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.find('\n').map_or("", |p| &r[p + 1..]).trim_start();
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |p| &r[p + 2..]).trim_start();
        } else {
            return rest.is_empty();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_end_at_semicolons_outside_quotes_and_comments() {
        let (s, rest) = split_statements(
            "select ';' as a, \"x;y\" from t; -- one; two\nselect 1 /* ; */;\n select 'it''s;' ; select 2",
        );
        assert_eq!(
            s,
            vec![
                "select ';' as a, \"x;y\" from t",
                "-- one; two\nselect 1 /* ; */",
                "select 'it''s;'",
            ]
        );
        assert_eq!(rest, " select 2");
        let (s, rest) = split_statements("select 'open; string");
        assert!(s.is_empty());
        assert_eq!(rest, "select 'open; string");
        assert!(is_blank("  -- only a comment\n /* and; this */ \n"));
        assert!(!is_blank("-- c\nselect 1"));
        assert!(is_blank(""));
    }
}
