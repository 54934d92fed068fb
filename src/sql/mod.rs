//! Read-only SQL over a snapshot: the guard that refuses writes and file
//! access, shared by `segments sql` and the `query` criterion.

pub mod tables;

use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SessionContext};

use crate::compile::read_only;
use crate::error::{Error, Result};

/// Plan a query with DDL, DML and statements refused, then check the plan.
pub async fn guarded(ctx: &SessionContext, sql: &str) -> Result<DataFrame> {
    let df = ctx.sql_with_options(sql, read_only()).await.map_err(|e| {
        let msg = e.to_string();
        if msg.contains("not supported")
            && (msg.contains("DDL") || msg.contains("DML") || msg.contains("Statement"))
        {
            Error::ReadOnly(msg)
        } else {
            Error::Engine(e)
        }
    })?;
    check_plan(df.logical_plan())?;
    Ok(df)
}

/// Refuse any plan node that writes or defines something.
pub fn check_plan(plan: &LogicalPlan) -> Result<()> {
    let mut bad: Option<String> = None;
    plan.apply(|p| match p {
        LogicalPlan::Dml(_)
        | LogicalPlan::Ddl(_)
        | LogicalPlan::Copy(_)
        | LogicalPlan::Statement(_) => {
            bad = Some(p.display().to_string());
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Stop)
        }
        _ => Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue),
    })?;
    match bad {
        Some(what) => Err(Error::ReadOnly(what)),
        None => Ok(()),
    }
}

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
    Ok((schema, df.collect().await?))
}
