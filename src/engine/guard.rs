//! The read-only guard of every SQL text a user gives (`segments sql`, the
//! PostgreSQL protocol, `query` and `sql` criteria): DDL, DML and
//! statements are refused while planning, and the plan is checked again.

use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SQLOptions, SessionContext};

use crate::error::{Error, Result};

/// SQL options that refuse DDL, DML and statements such as SET or COPY.
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

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
