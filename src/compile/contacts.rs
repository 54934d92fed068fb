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
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema};
use datafusion::logical_expr::{Expr, ExprSchemable, col};
use datafusion::parquet::file::metadata::RowGroupMetaData;
use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
use datafusion::parquet::file::statistics::Statistics;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execute_stream_partitioned;
use futures::StreamExt;
use roaring::RoaringBitmap;

use crate::base::manifest::DataFile;
use crate::base::schema::IID;
use crate::base::table::read_parquet_one;
use crate::compile::dictionary::{DictionaryTest, is_dictionary, true_bits};
use crate::compile::materialize::{add_masked, bits_from, iid_column, members_mask};
use crate::compile::pages::{PositionedFile, ValueTest, dictionary_rows, is_dictionary_chunk};
use crate::engine::Session;
use crate::engine::session::CONTACTS;
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
    /// which it is true, among all or among the internal ids of `range`.
    pub async fn contact_bitmaps(
        &self,
        exprs: &[Expr],
        range: Option<Range<u32>>,
        only: Option<(&RoaringBitmap, &[bool])>,
        changed_rows: Option<&[DataFile]>,
    ) -> Result<Vec<RoaringBitmap>> {
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
        // Every condition needs hold for a few contacts only, whose rows
        // imports kept: those rows alone are read.
        let kept_rows = match (only, changed_rows) {
            (Some((rows, restricted)), Some(files)) if restricted.iter().all(|&r| r) => {
                self.changed_rows(files, rows)?
            }
            _ => None,
        };
        if kept_rows.is_none()
            && shared.is_empty()
            && range.is_none()
            && let Some(out) = self
                .contact_bitmaps_from_pages(&rewritten, &atom_exprs)
                .await?
        {
            return Ok(out);
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
        let from_kept = kept_rows.is_some();
        let mut df = match kept_rows {
            Some(batches) => self.ctx.read_batches(batches)?,
            None => self.ctx.table(CONTACTS).await?,
        };
        if let Some(r) = range {
            df = df.filter(crate::compile::iid_range(r))?;
        }
        // Every condition needs hold for a few contacts only: their rows
        // alone are kept before anything is computed.
        if let Some((rows, restricted)) = only
            && restricted.iter().all(|&r| r)
            && !from_kept
            && let Some(last) = rows.max()
        {
            df = df.filter(crate::engine::tables::id_in_set(rows, last + 1))?;
        }
        let plan = df.select(select)?.create_physical_plan().await?;
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
        // Leaves that need hold for a few contacts only are evaluated on
        // their rows alone.
        let only: Option<(Arc<RoaringBitmap>, Arc<Vec<bool>>)> = only
            .filter(|(_, r)| r.iter().any(|&r| r))
            .map(|(rows, r)| (Arc::new(rows.clone()), Arc::new(r.to_vec())));
        let streams = execute_stream_partitioned(plan, self.ctx.task_ctx())?;
        let mut tasks = Vec::with_capacity(streams.len());
        for mut stream in streams {
            let (tests, atoms, extended) = (tests.clone(), atoms.clone(), extended.clone());
            let only = only.clone();
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
                    let few = match &only {
                        Some((rows, _)) => {
                            let ids = iid_column(&batch)?;
                            let keep = BooleanArray::new(members_mask(ids.values(), rows), None);
                            Some(filter_record_batch(&batch, &keep)?)
                        }
                        None => None,
                    };
                    for (i, (test, bm)) in tests.iter().zip(out.iter_mut()).enumerate() {
                        let batch = match (&few, &only) {
                            (Some(few), Some((_, restricted))) if restricted[i] => few,
                            _ => &batch,
                        };
                        let ids = iid_column(batch)?;
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

    /// The rows now of the live contacts among `wanted`, from the files of
    /// rows imports kept (newest first: a contact's newest row is its row
    /// now), stored as the contacts file stores them. `None` when those
    /// files do not hold every one of them, or lack a column.
    fn changed_rows(
        &self,
        files: &[DataFile],
        wanted: &RoaringBitmap,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let wanted = wanted & &self.all_contacts;
        let mut taken = RoaringBitmap::new();
        let mut out = Vec::new();
        for f in files.iter().rev() {
            if taken.len() == wanted.len() {
                break;
            }
            let batch = self.kept_rows_of(f)?;
            let left = &wanted - &taken;
            let keep = members_mask(iid_column(&batch)?.values(), &left);
            let batch = filter_record_batch(&batch, &BooleanArray::new(keep, None))?;
            taken.extend(iid_column(&batch)?.values().iter().copied());
            let mut columns = Vec::with_capacity(self.contacts_schema.fields().len());
            for field in self.contacts_schema.fields() {
                match batch.column_by_name(field.name()) {
                    Some(c) => columns.push(cast(c, field.data_type())?),
                    None => return Ok(None),
                }
            }
            out.push(RecordBatch::try_new(self.contacts_schema.clone(), columns)?);
        }
        if out.is_empty() {
            out.push(RecordBatch::new_empty(self.contacts_schema.clone()));
        }
        Ok((taken == wanted).then_some(out))
    }

    /// A file of rows an import kept, read once per session.
    fn kept_rows_of(&self, f: &DataFile) -> Result<RecordBatch> {
        let cache = || self.kept_rows.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = cache().get(&f.path) {
            return Ok(b.clone());
        }
        let batch = read_parquet_one(&self.base.dir().join(&f.path), None)?;
        cache().insert(f.path.clone(), batch.clone());
        Ok(batch)
    }

    /// The contacts pass read straight from the pages of the contacts file
    /// (see [`crate::base::pages`]), when every condition is made of tests
    /// of dictionary columns and each row group's internal ids are
    /// contiguous: contacts are stored in id order, so that, in a base
    /// without deletions, the rows of a row group are the ids from its
    /// first one on, and no column is read but the tested ones. `None` when
    /// that does not hold.
    async fn contact_bitmaps_from_pages(
        &self,
        exprs: &[Expr],
        atom_exprs: &[(Expr, String)],
    ) -> Result<Option<Vec<RoaringBitmap>>> {
        let only_atoms = exprs.iter().all(|e| {
            let refs = e.column_refs();
            !refs.is_empty() && refs.iter().all(|c| is_atom_name(&c.name))
        });
        let Some(file) = &self.manifest.contacts else {
            return Ok(None);
        };
        if atom_exprs.is_empty() || !only_atoms {
            return Ok(None);
        }
        let path = self.base.dir().join(&file.path);
        let opened = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        let reader = SerializedFileReader::new(PositionedFile(opened))
            .map_err(|e| Error::parquet(&path, e))?;
        let meta = reader.metadata();
        let leaves = meta.file_metadata().schema_descr();
        let leaf = |name: &str| {
            leaves
                .columns()
                .iter()
                .position(|c| c.path().parts() == [name])
        };
        let Some(iid) = leaf(IID) else {
            return Ok(None);
        };
        let mut atoms = Vec::with_capacity(atom_exprs.len());
        let mut fields = Vec::with_capacity(atom_exprs.len());
        for (i, (e, column)) in atom_exprs.iter().enumerate() {
            let field = self.contacts_schema.field_with_name(column)?;
            let (Some(at), Some(test)) = (leaf(column), DictionaryTest::new(self, e, field)?)
            else {
                return Ok(None);
            };
            atoms.push((at, test));
            fields.push(Field::new(atom_name(i), DataType::Boolean, false));
        }
        let mut firsts = Vec::with_capacity(meta.num_row_groups());
        for rg in meta.row_groups() {
            let Some(first) = contiguous_ids(rg, iid) else {
                return Ok(None);
            };
            if !atoms
                .iter()
                .all(|(at, _)| is_dictionary_chunk(rg.column(*at)))
            {
                return Ok(None);
            }
            firsts.push(first);
        }
        let schema = Arc::new(Schema::new(fields));
        let tests: Vec<Test> = exprs
            .iter()
            .map(|e| self.test(e.clone(), &schema))
            .collect::<Result<_>>()?;
        let workers = self
            .ctx
            .copied_config()
            .target_partitions()
            .clamp(1, firsts.len().max(1));
        // Each column is decoded once for all the conditions on it.
        let mut by_column: Vec<(usize, Vec<usize>)> = Vec::new();
        for (i, (at, _)) in atoms.iter().enumerate() {
            match by_column.iter_mut().find(|(c, _)| c == at) {
                Some((_, of_column)) => of_column.push(i),
                None => by_column.push((*at, vec![i])),
            }
        }
        let read = move || -> Result<Option<Vec<RoaringBitmap>>> {
            let truths: Vec<_> = atoms
                .iter()
                .map(|(_, test)| move |values: ArrayRef| test.truth(values))
                .collect();
            let next = AtomicUsize::new(0);
            // One row group at a time per worker: its tested columns, then
            // each condition over them.
            let work = || -> Result<Option<Vec<RoaringBitmap>>> {
                let mut out = vec![RoaringBitmap::new(); tests.len()];
                loop {
                    let g = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&first) = firsts.get(g) else {
                        return Ok(Some(out));
                    };
                    let rg = reader
                        .get_row_group(g)
                        .map_err(|e| Error::parquet(&path, e))?;
                    let rows = usize::try_from(rg.metadata().num_rows()).unwrap_or(0);
                    let mut columns: Vec<Option<ArrayRef>> = vec![None; atoms.len()];
                    for (at, of_column) in &by_column {
                        let tests: Vec<ValueTest> = of_column
                            .iter()
                            .map(|&i| ValueTest {
                                truth: &truths[i],
                                on_null: atoms[i].1.on_null(),
                            })
                            .collect();
                        let Some(bits) = dictionary_rows(&path, rg.as_ref(), *at, &tests)? else {
                            return Ok(None);
                        };
                        for (&i, bits) in of_column.iter().zip(bits) {
                            columns[i] = Some(Arc::new(BooleanArray::new(bits, None)));
                        }
                    }
                    let columns = columns.into_iter().flatten().collect();
                    let batch = RecordBatch::try_new(schema.clone(), columns)?;
                    for (test, bm) in tests.iter().zip(out.iter_mut()) {
                        let narrow = batch.project(&test.columns)?;
                        let mask = test.pass.evaluate(&narrow)?.into_array(rows)?;
                        *bm |= bits_from(first, &true_bits(mask.as_boolean()));
                    }
                }
            };
            let parts: Vec<Result<Option<Vec<RoaringBitmap>>>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..workers).map(|_| s.spawn(work)).collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(Error::Internal("contacts page reader panicked".into()))
                        })
                    })
                    .collect()
            });
            let mut out = vec![RoaringBitmap::new(); tests.len()];
            for part in parts {
                let Some(part) = part? else {
                    return Ok(None);
                };
                for (acc, bm) in out.iter_mut().zip(part) {
                    *acc |= bm;
                }
            }
            Ok(Some(out))
        };
        tokio::task::spawn_blocking(read)
            .await
            .map_err(|e| Error::Internal(format!("contacts page reader: {e}")))?
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
pub(crate) fn unqualify(e: Expr) -> Result<Expr> {
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

fn is_atom_name(name: &str) -> bool {
    name.starts_with("__dict_")
}

/// The first internal id of a row group whose ids, by its statistics, are
/// as many consecutive ids as it has rows.
fn contiguous_ids(rg: &RowGroupMetaData, iid: usize) -> Option<u32> {
    let Some(Statistics::Int32(st)) = rg.column(iid).statistics() else {
        return None;
    };
    if st.null_count_opt() != Some(0) || !st.min_is_exact() || !st.max_is_exact() {
        return None;
    }
    // Unsigned ids are kept in the statistics' signed integers.
    let (min, max) = (*st.min_opt()? as u32, *st.max_opt()? as u32);
    let rows = u64::try_from(rg.num_rows()).ok()?;
    (rows > 0 && u64::from(max.checked_sub(min)?) + 1 == rows).then_some(min)
}

/// Columns computed by the pass rather than read.
fn is_derived_name(name: &str) -> bool {
    name.starts_with("__shared_") || is_atom_name(name)
}
