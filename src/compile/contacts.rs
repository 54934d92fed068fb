//! The contacts pass: every contact condition of a batch evaluated in one
//! scan of contacts.
//!
//! DataFusion reads the columns the conditions use and computes, once per
//! row, the derived values several conditions share (`lower_text(city)`,
//! `lower_tags(interests)`...). Each condition then runs as a physical
//! expression over a batch of its own columns only, so that the selection
//! `AND` makes for its right-hand side copies narrow batches, and its result
//! goes straight into a bitmap. The partitions of the scan are evaluated in
//! parallel.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema};
use datafusion::logical_expr::{Expr, col};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execute_stream_partitioned;
use futures::StreamExt;
use roaring::RoaringBitmap;

use crate::base::schema::IID;
use crate::bitmaps::materialize::{add_masked, iid_column};
use crate::compile::Session;
use crate::compile::session::CONTACTS;
use crate::error::{Error, Result};

/// Functions of one column computed once per row when conditions use them:
/// they return null for null and never fail.
const SHARED_FUNCTIONS: [&str; 4] = ["lower_text", "lower", "lower_tags", "month_day"];

/// A condition over the columns it reads.
struct Test {
    /// Positions of its columns in the scan's batches.
    columns: Vec<usize>,
    pass: Arc<dyn PhysicalExpr>,
}

impl Session {
    /// One bitmap per boolean expression over contacts: the contacts for
    /// which it is true.
    pub async fn contact_bitmaps(&self, exprs: &[Expr]) -> Result<Vec<RoaringBitmap>> {
        let mut shared: Vec<Expr> = Vec::new();
        let rewritten: Vec<Expr> = exprs
            .iter()
            .map(|e| share(e.clone(), &mut shared))
            .collect::<Result<_>>()?;
        let mut columns: BTreeSet<String> = BTreeSet::new();
        for e in &rewritten {
            for c in e.column_refs() {
                if !is_shared_name(&c.name) {
                    columns.insert(c.name.clone());
                }
            }
        }
        let mut select = vec![col(IID)];
        select.extend(columns.iter().map(|c| col(c.as_str())));
        select.extend(
            shared
                .iter()
                .enumerate()
                .map(|(i, e)| e.clone().alias(shared_name(i))),
        );
        let df = self.ctx.table(CONTACTS).await?.select(select)?;
        let plan = df.create_physical_plan().await?;
        let schema = plan.schema();
        let tests: Vec<Test> = rewritten
            .into_iter()
            .map(|e| self.test(e, &schema))
            .collect::<Result<_>>()?;
        let tests = Arc::new(tests);
        let streams = execute_stream_partitioned(plan, self.ctx.task_ctx())?;
        let mut tasks = Vec::with_capacity(streams.len());
        for mut stream in streams {
            let tests = tests.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = vec![RoaringBitmap::new(); tests.len()];
                while let Some(batch) = stream.next().await {
                    let batch = batch?;
                    let ids = iid_column(&batch)?;
                    for (test, bm) in tests.iter().zip(out.iter_mut()) {
                        let narrow = batch.project(&test.columns)?;
                        let mask = test.pass.evaluate(&narrow)?.into_array(narrow.num_rows())?;
                        add_masked(bm, ids, mask.as_boolean());
                    }
                }
                Ok::<_, Error>(out)
            }));
        }
        let mut out = vec![RoaringBitmap::new(); exprs.len()];
        for task in tasks {
            let part = task
                .await
                .map_err(|e| Error::Internal(format!("contacts scan task: {e}")))??;
            for (acc, bm) in out.iter_mut().zip(part) {
                *acc |= bm;
            }
        }
        Ok(out)
    }

    /// A condition compiled over a batch of the columns it reads.
    fn test(&self, e: Expr, scan: &SchemaRef) -> Result<Test> {
        let names: BTreeSet<String> = e.column_refs().iter().map(|c| c.name.clone()).collect();
        let mut columns = Vec::with_capacity(names.len());
        for name in &names {
            columns.push(scan.index_of(name)?);
        }
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|&i| scan.field(i).clone())
                .collect::<Vec<_>>(),
        ));
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        Ok(Test {
            columns,
            pass: self.physical_expr(e, &df_schema)?,
        })
    }
}

/// Replace each call of a shared function on a column by a reference to a
/// column of the scan that computes it once.
fn share(e: Expr, shared: &mut Vec<Expr>) -> Result<Expr> {
    let out = e.transform_up(|node| {
        // Columns as the scan's batches name them (an SQL criterion
        // qualifies them with the table).
        if let Expr::Column(c) = &node
            && c.relation.is_some()
        {
            return Ok(Transformed::yes(col(Column::new_unqualified(&c.name))));
        }
        let Expr::ScalarFunction(f) = &node else {
            return Ok(Transformed::no(node));
        };
        let one_column = matches!(f.args.as_slice(), [Expr::Column(_)]);
        if !one_column || !SHARED_FUNCTIONS.contains(&f.func.name()) {
            return Ok(Transformed::no(node));
        }
        let i = match shared.iter().position(|x| x == &node) {
            Some(i) => i,
            None => {
                shared.push(node.clone());
                shared.len() - 1
            }
        };
        Ok(Transformed::yes(col(shared_name(i))))
    })?;
    Ok(out.data)
}

fn shared_name(i: usize) -> String {
    format!("__shared_{i}")
}

fn is_shared_name(name: &str) -> bool {
    name.starts_with("__shared_")
}
