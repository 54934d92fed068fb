//! The contacts pass: every contact condition of a batch evaluated in one
//! scan of contacts.
//!
//! DataFusion reads the columns the conditions use and computes, once per
//! row, the derived values several conditions share (`lower_text(city)`,
//! `lower_tags(interests)`...). Each condition then runs as a physical
//! expression over a batch of its own columns only, so that the selection
//! `AND` makes for its right-hand side copies narrow batches, and its result
//! goes straight into a bitmap. A condition on one dictionary-encoded
//! column (text of few distinct values, such as a city) is tested on the
//! dictionary's values and looked up by key for each row. The partitions of
//! the scan are evaluated in parallel.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema};
use datafusion::logical_expr::{Expr, ExprSchemable, col};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execute_stream_partitioned;
use futures::StreamExt;
use roaring::RoaringBitmap;

use crate::base::schema::IID;
use crate::bitmaps::materialize::{add_masked, iid_column};
use crate::compile::Session;
use crate::compile::dictionary::{DictionaryTest, is_dictionary};
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

/// A boolean part of conditions that reads one dictionary column, computed
/// for each batch as a column of its own (`__dict_N`).
struct Atom {
    /// Position of the dictionary column in the scan's batches.
    column: usize,
    test: DictionaryTest,
}

impl Session {
    /// One bitmap per boolean expression over contacts: the contacts for
    /// which it is true.
    pub async fn contact_bitmaps(&self, exprs: &[Expr]) -> Result<Vec<RoaringBitmap>> {
        let dictionaries: HashMap<String, Field> = self
            .contacts_schema
            .fields()
            .iter()
            .filter(|f| is_dictionary(f.data_type()))
            .map(|f| (f.name().clone(), f.as_ref().clone()))
            .collect();
        let table = DFSchema::try_from(self.contacts_schema.as_ref().clone())?;
        let mut atom_exprs: Vec<(Expr, String)> = Vec::new();
        let mut shared: Vec<Expr> = Vec::new();
        let rewritten: Vec<Expr> = exprs
            .iter()
            .map(|e| {
                let e = atomize(
                    unqualify(e.clone())?,
                    &dictionaries,
                    &table,
                    &mut atom_exprs,
                )?;
                share(e, &mut shared)
            })
            .collect::<Result<_>>()?;
        let mut columns: BTreeSet<String> = BTreeSet::new();
        for e in &rewritten {
            for c in e.column_refs() {
                if !is_derived_name(&c.name) {
                    columns.insert(c.name.clone());
                }
            }
        }
        columns.extend(atom_exprs.iter().map(|(_, c)| c.clone()));
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
        let scan = plan.schema();
        let mut atoms = Vec::with_capacity(atom_exprs.len());
        let mut fields: Vec<Field> = scan.fields().iter().map(|f| f.as_ref().clone()).collect();
        for (i, (e, column)) in atom_exprs.iter().enumerate() {
            let column = scan.index_of(column)?;
            let test = DictionaryTest::new(self, e, scan.field(column))?.ok_or_else(|| {
                Error::Internal(format!("{e} is not a test of one dictionary column"))
            })?;
            atoms.push(Atom { column, test });
            fields.push(Field::new(atom_name(i), DataType::Boolean, false));
        }
        let extended = Arc::new(Schema::new(fields));
        let tests: Vec<Test> = rewritten
            .into_iter()
            .map(|e| self.test(e, &extended))
            .collect::<Result<_>>()?;
        let tests = Arc::new(tests);
        let atoms = Arc::new(atoms);
        let streams = execute_stream_partitioned(plan, self.ctx.task_ctx())?;
        let mut tasks = Vec::with_capacity(streams.len());
        for mut stream in streams {
            let (tests, atoms, extended) = (tests.clone(), atoms.clone(), extended.clone());
            tasks.push(tokio::spawn(async move {
                let mut out = vec![RoaringBitmap::new(); tests.len()];
                while let Some(batch) = stream.next().await {
                    let batch = batch?;
                    let mut columns = batch.columns().to_vec();
                    for atom in atoms.iter() {
                        let bits = atom.test.evaluate(batch.column(atom.column))?;
                        columns.push(Arc::new(BooleanArray::new(bits, None)));
                    }
                    let batch = RecordBatch::try_new(extended.clone(), columns)?;
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

/// Columns as the scan's batches name them (an SQL criterion qualifies
/// them with the table).
fn unqualify(e: Expr) -> Result<Expr> {
    Ok(e.transform_up(|node| match &node {
        Expr::Column(c) if c.relation.is_some() => {
            Ok(Transformed::yes(col(Column::new_unqualified(&c.name))))
        }
        _ => Ok(Transformed::no(node)),
    })?
    .data)
}

/// Replace each largest boolean part of `e` that reads one dictionary
/// column only (`city = 'paris'`, `lower_text(city) LIKE '%ry'`...) by a
/// reference to a column that computes it on the dictionary's values.
fn atomize(
    e: Expr,
    dictionaries: &HashMap<String, Field>,
    table: &DFSchema,
    atoms: &mut Vec<(Expr, String)>,
) -> Result<Expr> {
    if dictionaries.is_empty() {
        return Ok(e);
    }
    Ok(e.transform_down(|node| {
        if matches!(node, Expr::Column(_) | Expr::Literal(..)) {
            return Ok(Transformed::no(node));
        }
        let refs = node.column_refs();
        let column = match refs.iter().next() {
            Some(c) if refs.len() == 1 && dictionaries.contains_key(&c.name) => c.name.clone(),
            _ => return Ok(Transformed::no(node)),
        };
        if !matches!(node.get_type(table), Ok(DataType::Boolean)) {
            return Ok(Transformed::no(node));
        }
        let i = match atoms.iter().position(|(x, _)| x == &node) {
            Some(i) => i,
            None => {
                atoms.push((node, column));
                atoms.len() - 1
            }
        };
        Ok(Transformed::new(
            col(atom_name(i)),
            true,
            TreeNodeRecursion::Jump,
        ))
    })?
    .data)
}

/// Replace each call of a shared function on a column by a reference to a
/// column of the scan that computes it once.
fn share(e: Expr, shared: &mut Vec<Expr>) -> Result<Expr> {
    let out = e.transform_up(|node| {
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

fn atom_name(i: usize) -> String {
    format!("__dict_{i}")
}

/// Columns computed by the pass rather than read.
fn is_derived_name(name: &str) -> bool {
    name.starts_with("__shared_") || name.starts_with("__dict_")
}
