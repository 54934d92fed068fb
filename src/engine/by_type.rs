//! Filters on the event type answered by the layout of the events files.
//! A file stored by type keeps each type's rows in row groups of their own,
//! so a filter on `type` alone picks whole row groups: the scan reads them
//! as byte ranges of their files, and the filter is neither evaluated on
//! rows nor its column decoded. Nor are the files' statistics and Bloom
//! filters looked through for it.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::Statistics;
use datafusion::datasource::listing::{ListingTableUrl, PartitionedFile};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;

use crate::base::events::TypeGroups;
use crate::base::manifest::EventFile;

/// A test on the event type alone, with text literals: `type = 'x'`,
/// `<>`, `IN`, `NOT IN`, and their `AND`, `OR` and `NOT`. The type of an
/// event is never null, nor is any literal of a test, so each test is true
/// or false of a type, never unknown.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TypeTest {
    In(Vec<String>),
    Not(Box<TypeTest>),
    All(Vec<TypeTest>),
    Any(Vec<TypeTest>),
}

impl TypeTest {
    /// The test a filter is, when it is one.
    pub(crate) fn of(e: &Expr) -> Option<TypeTest> {
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
                Operator::And => Some(TypeTest::All(vec![Self::of(left)?, Self::of(right)?])),
                Operator::Or => Some(TypeTest::Any(vec![Self::of(left)?, Self::of(right)?])),
                Operator::Eq | Operator::NotEq => {
                    let value = match (is_type(left), is_type(right)) {
                        (true, false) => text(right)?,
                        (false, true) => text(left)?,
                        _ => return None,
                    };
                    let is = TypeTest::In(vec![value]);
                    Some(match op {
                        Operator::Eq => is,
                        _ => TypeTest::Not(Box::new(is)),
                    })
                }
                _ => None,
            },
            Expr::InList(l) if is_type(&l.expr) => {
                let is = TypeTest::In(l.list.iter().map(text).collect::<Option<_>>()?);
                Some(match l.negated {
                    true => TypeTest::Not(Box::new(is)),
                    false => is,
                })
            }
            Expr::Not(inner) => Some(TypeTest::Not(Box::new(Self::of(inner)?))),
            _ => None,
        }
    }

    pub(crate) fn passes(&self, ty: &str) -> bool {
        match self {
            TypeTest::In(values) => values.iter().any(|v| v == ty),
            TypeTest::Not(t) => !t.passes(ty),
            TypeTest::All(ts) => ts.iter().all(|t| t.passes(ty)),
            TypeTest::Any(ts) => ts.iter().any(|t| t.passes(ty)),
        }
    }
}

/// The `type` column, or its values cast to text.
fn is_type(e: &Expr) -> bool {
    use datafusion::arrow::datatypes::DataType;
    match e {
        Expr::Column(c) => c.name == "type",
        Expr::Cast(c) => {
            matches!(
                c.field.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) && is_type(&c.expr)
        }
        _ => false,
    }
}

fn text(e: &Expr) -> Option<String> {
    match e {
        Expr::Literal(v, _) => v.try_as_str().flatten().map(str::to_string),
        _ => None,
    }
}

/// The row groups of events files by their location in a scan.
pub(crate) type TypeLayouts = HashMap<String, Arc<TypeGroups>>;

/// The row groups of each of `files` (of the base in `dir`) by its
/// location in a scan: None when one is not stored by type, or unreadable.
pub(crate) fn layouts<'a>(
    dir: &std::path::Path,
    files: impl IntoIterator<Item = &'a EventFile>,
) -> Option<TypeLayouts> {
    files
        .into_iter()
        .map(|e| {
            let layout = crate::base::events::rows_by_type(dir, e)?;
            let path = dir.join(&e.file.path);
            let url = ListingTableUrl::parse(path.to_string_lossy()).ok()?;
            Some((url.prefix().as_ref().to_string(), layout))
        })
        .collect()
}

/// `plan`, a scan of Parquet files of events (whole, or in byte ranges
/// that together cover them), reading only the row groups whose type
/// passes `test`, in `partitions` groups of about as many rows each.
/// `layouts` holds the row groups of every file by its location in the
/// scan. None when `plan` is not such a scan, or one of its files is not
/// stored by type.
pub(crate) fn only_types(
    plan: &Arc<dyn ExecutionPlan>,
    test: &TypeTest,
    layouts: &TypeLayouts,
    partitions: usize,
    limit: Option<usize>,
) -> Option<Arc<dyn ExecutionPlan>> {
    let exec = plan.downcast_ref::<DataSourceExec>()?;
    let conf = exec.data_source().downcast_ref::<FileScanConfig>()?;
    // Each row group read: its file, its index there, its rows.
    let mut files: Vec<(&PartitionedFile, &TypeGroups)> = Vec::new();
    let mut wanted: Vec<(usize, usize, u64)> = Vec::new();
    for part in conf.file_groups.iter().flat_map(|g| g.iter()) {
        let location = &part.object_meta.location;
        let at = match files
            .iter()
            .position(|(f, _)| f.object_meta.location == *location)
        {
            Some(at) => at,
            None => {
                files.push((part, layouts.get(location.as_ref())?));
                files.len() - 1
            }
        };
        // A row group belongs to the range holding its first page.
        for (i, g) in files[at].1.groups.iter().enumerate() {
            let held = part.range.as_ref().is_none_or(|r| r.contains(g.start));
            if held && test.passes(&g.ty) {
                wanted.push((at, i, g.rows));
            }
        }
    }
    wanted.sort_unstable();
    if wanted.is_empty() {
        return Some(Arc::new(EmptyExec::new(plan.schema())));
    }
    let groups = spread(&files, &wanted, partitions.max(1));
    let conf = FileScanConfigBuilder::from(conf.clone())
        .with_file_groups(groups)
        .with_statistics(Statistics::new_unknown(conf.file_schema()))
        .with_limit(limit)
        .build();
    Some(DataSourceExec::from_data_source(conf))
}

/// The wanted row groups in at most `partitions` groups of about as many
/// rows each, in file order; consecutive row groups of a file in a group
/// are read as one byte range, from the first's start to the start of the
/// row group after the last (or the end of the file).
fn spread(
    files: &[(&PartitionedFile, &TypeGroups)],
    wanted: &[(usize, usize, u64)],
    partitions: usize,
) -> Vec<FileGroup> {
    let total: u64 = wanted.iter().map(|w| w.2).sum();
    let quota = total.div_ceil(partitions as u64).max(1);
    let end_of = |file: usize, group: usize| {
        let (f, layout) = files[file];
        match layout.groups.get(group + 1) {
            Some(next) => next.start,
            None => f.object_meta.size as i64,
        }
    };
    let range = |file: usize, first: usize, last: usize| {
        let (f, layout) = files[file];
        let mut part = f.clone();
        part.statistics = None;
        part.with_range(layout.groups[first].start, end_of(file, last))
    };
    let mut out: Vec<FileGroup> = Vec::new();
    let mut group: Vec<PartitionedFile> = Vec::new();
    let mut rows = 0u64;
    // The run of row groups being gathered: file, first and last.
    let mut run: Option<(usize, usize, usize)> = None;
    for &(file, i, n) in wanted {
        run = match run {
            Some((f, first, last)) if f == file && last + 1 == i => Some((f, first, i)),
            Some((f, first, last)) => {
                group.push(range(f, first, last));
                Some((file, i, i))
            }
            None => Some((file, i, i)),
        };
        rows += n;
        if rows >= quota && out.len() + 1 < partitions {
            if let Some((f, first, last)) = run.take() {
                group.push(range(f, first, last));
            }
            out.push(FileGroup::new(std::mem::take(&mut group)));
            rows = 0;
        }
    }
    if let Some((f, first, last)) = run {
        group.push(range(f, first, last));
    }
    if !group.is_empty() {
        out.push(FileGroup::new(group));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn filters_on_the_type_alone_are_tests_of_a_type() {
        let ty = || col("type");
        let cases: Vec<(Expr, Option<[bool; 3]>)> = vec![
            // Outcomes for the types "open", "click", "purchase".
            (ty().eq(lit("open")), Some([true, false, false])),
            (lit("click").eq(ty()), Some([false, true, false])),
            (ty().not_eq(lit("open")), Some([false, true, true])),
            (
                ty().in_list(vec![lit("open"), lit("purchase")], false),
                Some([true, false, true]),
            ),
            (
                ty().in_list(vec![lit("open"), lit("purchase")], true),
                Some([false, true, false]),
            ),
            (
                ty().eq(lit("open")).or(ty().eq(lit("click"))),
                Some([true, true, false]),
            ),
            (
                ty().not_eq(lit("open")).and(ty().not_eq(lit("click"))),
                Some([false, false, true]),
            ),
            (!ty().eq(lit("purchase")), Some([true, true, false])),
            (
                datafusion::logical_expr::cast(ty(), datafusion::arrow::datatypes::DataType::Utf8)
                    .eq(lit("click")),
                Some([false, true, false]),
            ),
            // Not tests of the type alone.
            (ty().eq(lit("open")).or(col("amount").gt(lit(3))), None),
            (ty().eq(col("operation_id")), None),
            (ty().eq(lit(ScalarNull)), None),
            (ty().like(lit("o%")), None),
            (ty().gt(lit("m")), None),
            (
                datafusion::logical_expr::cast(ty(), datafusion::arrow::datatypes::DataType::Int32)
                    .eq(lit(1)),
                None,
            ),
        ];
        for (e, want) in cases {
            let got = TypeTest::of(&e).map(|t| ["open", "click", "purchase"].map(|x| t.passes(x)));
            assert_eq!(got, want, "{e}");
        }
    }

    /// However many partitions and whichever types are wanted, the byte
    /// ranges hold each wanted row group once (by the offset of its first
    /// page, as the Parquet scan decides) and no other, in at most as many
    /// groups as partitions, of about as many rows each.
    #[test]
    fn wanted_row_groups_are_read_once_in_groups_of_about_as_many_rows() {
        use crate::base::events::{TypeGroup, TypeGroups};
        let types = ["a", "b", "c"];
        // Three files: row groups of unequal sizes, several per type.
        let layouts: Vec<(PartitionedFile, TypeGroups)> = (0..3u64)
            .map(|f| {
                let mut start = 4;
                let groups: Vec<TypeGroup> = (0..7 + f as usize)
                    .map(|i| {
                        let rows = 10 + ((i as u64 * 37 + f * 11) % 90);
                        let g = TypeGroup {
                            ty: types[(i * 2 / 5 + f as usize) % 3].to_string(),
                            rows,
                            start,
                        };
                        start += rows as i64 * 3 + 17;
                        g
                    })
                    .collect();
                let file = PartitionedFile::new(format!("f{f}.parquet"), start as u64 + 500);
                (file, TypeGroups::new(groups))
            })
            .collect();
        let files: Vec<(&PartitionedFile, &TypeGroups)> =
            layouts.iter().map(|(f, l)| (f, l)).collect();
        for test in [
            TypeTest::In(vec!["a".into()]),
            TypeTest::In(vec!["a".into(), "c".into()]),
            TypeTest::Not(Box::new(TypeTest::In(vec![]))),
        ] {
            let wanted: Vec<(usize, usize, u64)> = files
                .iter()
                .enumerate()
                .flat_map(|(f, (_, l))| {
                    l.groups
                        .iter()
                        .enumerate()
                        .filter(|(_, g)| test.passes(&g.ty))
                        .map(move |(i, g)| (f, i, g.rows))
                })
                .collect();
            let total: u64 = wanted.iter().map(|w| w.2).sum();
            for partitions in 1..=6 {
                let groups = spread(&files, &wanted, partitions);
                assert!(groups.len() <= partitions, "{test:?} in {partitions}");
                let mut read = Vec::new();
                let mut largest = 0;
                for g in &groups {
                    let mut rows = 0;
                    for part in g.iter() {
                        let r = part.range.as_ref().expect("a range");
                        let f = files
                            .iter()
                            .position(|(p, _)| p.object_meta.location == part.object_meta.location)
                            .unwrap();
                        for (i, tg) in files[f].1.groups.iter().enumerate() {
                            if r.contains(tg.start) {
                                read.push((f, i, tg.rows));
                                rows += tg.rows;
                            }
                        }
                    }
                    largest = largest.max(rows);
                }
                read.sort();
                assert_eq!(read, wanted, "{test:?} in {partitions}");
                // No group holds much more than its share: at most one row
                // group past it.
                let share = total.div_ceil(partitions as u64);
                assert!(
                    largest < share + 100,
                    "{test:?} in {partitions}: {largest} of {total}"
                );
            }
        }
    }

    /// A scan of whole files, and one whose files the planner cut into
    /// byte ranges at any offsets, read the same row groups: those of the
    /// types wanted, each once.
    #[test]
    fn scans_of_whole_files_or_of_their_ranges_read_the_row_groups_of_the_types() {
        use crate::base::events::{TypeGroup, TypeGroups};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use datafusion::datasource::physical_plan::ParquetSource;
        use datafusion::execution::object_store::ObjectStoreUrl;
        let types = ["a", "b", "c", "d"];
        let mut layouts = HashMap::new();
        let mut whole = Vec::new();
        for f in 0..3usize {
            let mut start = 4;
            let groups: Vec<TypeGroup> = (0..9)
                .map(|i| {
                    let g = TypeGroup {
                        ty: types[(i + f) % 4].to_string(),
                        rows: 50 + i as u64,
                        start,
                    };
                    start += 1000 + 37 * i as i64;
                    g
                })
                .collect();
            let file = PartitionedFile::new(format!("events/f{f}.parquet"), start as u64 + 300);
            layouts.insert(
                file.object_meta.location.as_ref().to_string(),
                Arc::new(TypeGroups::new(groups)),
            );
            whole.push(file);
        }
        // Cut at offsets inside row groups, at their starts, and past them.
        let cut: Vec<PartitionedFile> = whole
            .iter()
            .flat_map(|f| {
                let size = f.object_meta.size as i64;
                let cuts = [0, 1500, 4004, 6100, size];
                cuts.windows(2)
                    .map(|w| f.clone().with_range(w[0], w[1]))
                    .collect::<Vec<_>>()
            })
            .collect();
        let schema = Arc::new(Schema::new(vec![Field::new("type", DataType::Utf8, false)]));
        let scan = |files: Vec<PartitionedFile>| -> Arc<dyn ExecutionPlan> {
            let groups = files
                .chunks(4)
                .map(|c| FileGroup::new(c.to_vec()))
                .collect();
            let conf = FileScanConfigBuilder::new(
                ObjectStoreUrl::local_filesystem(),
                Arc::new(ParquetSource::new(schema.clone())),
            )
            .with_file_groups(groups)
            .build();
            DataSourceExec::from_data_source(conf)
        };
        // (file, start of each row group read), in order.
        let read = |plan: &Arc<dyn ExecutionPlan>| -> Vec<(String, i64)> {
            let exec = plan.downcast_ref::<DataSourceExec>().expect("a scan");
            let conf = exec.data_source().downcast_ref::<FileScanConfig>().unwrap();
            let mut out = Vec::new();
            for part in conf.file_groups.iter().flat_map(|g| g.iter()) {
                let name = part.object_meta.location.as_ref().to_string();
                let r = part.range.as_ref().expect("a range");
                for g in &layouts[&name].groups {
                    if r.contains(g.start) {
                        out.push((name.clone(), g.start));
                    }
                }
            }
            out.sort();
            out
        };
        let test = TypeTest::In(vec!["b".into(), "c".into()]);
        let mut want: Vec<(String, i64)> = layouts
            .iter()
            .flat_map(|(name, l)| {
                l.groups
                    .iter()
                    .filter(|g| test.passes(&g.ty))
                    .map(move |g| (name.clone(), g.start))
            })
            .collect();
        want.sort();
        // Some of the ranges alone: the row groups they hold.
        let some: Vec<PartitionedFile> = cut.iter().skip(1).step_by(2).cloned().collect();
        let mut held: Vec<(String, i64)> = want
            .iter()
            .filter(|(name, start)| {
                some.iter().any(|p| {
                    p.object_meta.location.as_ref() == name
                        && p.range.as_ref().is_some_and(|r| r.contains(*start))
                })
            })
            .cloned()
            .collect();
        held.sort();
        assert!(!held.is_empty() && held.len() < want.len());
        for (files, want) in [(whole, &want), (cut, &want), (some, &held)] {
            for partitions in [1, 2, 3] {
                let plan = only_types(&scan(files.clone()), &test, &layouts, partitions, None)
                    .expect("files stored by type");
                assert_eq!(&read(&plan), want, "{partitions} partition(s)");
            }
        }
        // A file without its layout: not such a scan.
        let other = PartitionedFile::new("events/other.parquet", 10);
        assert!(only_types(&scan(vec![other]), &test, &layouts, 2, None).is_none());
    }

    /// A null text literal.
    struct ScalarNull;
    impl datafusion::logical_expr::Literal for ScalarNull {
        fn lit(&self) -> Expr {
            Expr::Literal(datafusion::common::ScalarValue::Utf8(None), None)
        }
    }
}
