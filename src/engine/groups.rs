//! `GROUP BY` one dictionary-encoded text column (a city, an event type, an
//! operation), found once per distinct value instead of once per row.
//!
//! DataFusion groups a dictionary column through its generic row format:
//! every row is converted to bytes, hashed and compared. Here the rows of a
//! batch only carry small keys into the batch's dictionary, and the
//! dictionary stays the same for every batch of a Parquet column chunk: a
//! key is mapped to its group the first time it is seen in a dictionary,
//! then each row costs one array lookup. The aggregates are DataFusion's
//! own group accumulators, fed the same way as by its `AggregateExec`, and
//! the node's output is the one of the `AggregateExec` it replaces (the
//! partial state for a two-step aggregation, the values for a single one).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::error::Result;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, InputOrderMode, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};

/// The physical rule: an `AggregateExec` over one dictionary-of-text group
/// column, with aggregates that have group accumulators (count, sum, min,
/// max, avg...), becomes a [`DictionaryGroupsExec`].
#[derive(Debug, Default)]
pub struct DictionaryGroups;

impl PhysicalOptimizerRule for DictionaryGroups {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let found = node
                .downcast_ref::<AggregateExec>()
                .map(DictionaryGroupsExec::replacing)
                .transpose()?
                .flatten();
            Ok(match found {
                Some(exec) => Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>),
                None => Transformed::no(node),
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "dictionary_groups"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// One aggregate of the node: its arguments, its `FILTER (WHERE ...)`, and
/// how to make its group accumulator.
#[derive(Debug, Clone)]
struct Aggregate {
    function: Arc<datafusion::physical_expr::aggregate::AggregateFunctionExpr>,
    arguments: Vec<Arc<dyn PhysicalExpr>>,
    filter: Option<Arc<dyn PhysicalExpr>>,
}

/// Groups the rows of each input partition by one dictionary-of-text
/// column and aggregates them (see the module's documentation).
#[derive(Debug)]
pub struct DictionaryGroupsExec {
    input: Arc<dyn ExecutionPlan>,
    group: Arc<dyn PhysicalExpr>,
    group_name: String,
    aggregates: Vec<Aggregate>,
    /// Final values (a single-step aggregation) rather than partial states.
    values: bool,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl DictionaryGroupsExec {
    /// The node that computes what `agg` computes, when it can.
    fn replacing(agg: &AggregateExec) -> Result<Option<Self>> {
        let values = match agg.mode() {
            AggregateMode::Partial => false,
            AggregateMode::Single | AggregateMode::SinglePartitioned => true,
            _ => return Ok(None),
        };
        let group_by = agg.group_expr();
        if group_by.has_grouping_set() || group_by.expr().len() != 1 {
            return Ok(None);
        }
        if agg.limit_options().is_some()
            || !agg.dynamic_expressions_produced().is_empty()
            || !matches!(agg.input_order_mode(), InputOrderMode::Linear)
        {
            return Ok(None);
        }
        let (group, group_name) = &group_by.expr()[0];
        let input_schema = agg.input().schema();
        if !is_dictionary_of_text(&group.data_type(&input_schema)?) {
            return Ok(None);
        }
        let mut aggregates = Vec::new();
        for (function, filter) in agg.aggr_expr().iter().zip(agg.filter_expr()) {
            if !function.groups_accumulator_supported()
                || function.is_distinct()
                || !function.order_bys().is_empty()
            {
                return Ok(None);
            }
            aggregates.push(Aggregate {
                function: function.clone(),
                arguments: function.expressions(),
                filter: filter.clone(),
            });
        }
        Ok(Some(DictionaryGroupsExec {
            input: agg.input().clone(),
            group: group.clone(),
            group_name: group_name.clone(),
            aggregates,
            values,
            schema: agg.schema(),
            properties: agg.properties().clone(),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }
}

fn is_dictionary_of_text(t: &DataType) -> bool {
    matches!(t, DataType::Dictionary(key, value)
        if key.is_dictionary_key_type() && **value == DataType::Utf8)
}

impl DisplayAs for DictionaryGroupsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.aggregates.iter().map(|a| a.function.name()).collect();
        write!(
            f,
            "DictionaryGroupsExec: mode={}, gby=[{}], aggr=[{}]",
            if self.values { "Single" } else { "Partial" },
            self.group_name,
            names.join(", ")
        )
    }
}

impl ExecutionPlan for DictionaryGroupsExec {
    fn name(&self) -> &str {
        "DictionaryGroupsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        let mut recursion = f(&self.group)?;
        for a in &self.aggregates {
            for e in a.arguments.iter().chain(&a.filter) {
                if recursion == TreeNodeRecursion::Stop {
                    return Ok(recursion);
                }
                recursion = f(e)?;
            }
        }
        Ok(recursion)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(DictionaryGroupsExec {
            input: children.swap_remove(0),
            group: self.group.clone(),
            group_name: self.group_name.clone(),
            aggregates: self.aggregates.clone(),
            values: self.values,
            schema: self.schema.clone(),
            properties: self.properties.clone(),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context.clone())?;
        let reservation = MemoryConsumer::new(format!("DictionaryGroupsExec[{partition}]"))
            .register(context.memory_pool());
        let mut groups = Groups {
            group: self.group.clone(),
            aggregates: self.aggregates.clone(),
            accumulators: self
                .aggregates
                .iter()
                .map(|a| a.function.create_groups_accumulator())
                .collect::<Result<_>>()?,
            ids: HashMap::new(),
            names: Vec::new(),
            null_group: None,
            dictionary: None,
            slots: Vec::new(),
            rows: Vec::new(),
            reservation,
        };
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let values = self.values;
        let schema = self.schema.clone();
        let batch_size = context.session_config().batch_size();
        let out = futures::stream::once(async move {
            let mut input = input;
            while let Some(batch) = input.next().await {
                let batch = batch?;
                let _timer = metrics.elapsed_compute().timer();
                groups.update(&batch)?;
            }
            let _timer = metrics.elapsed_compute().timer();
            let batch = groups.emit(&schema, values)?;
            metrics.record_output(batch.num_rows());
            let chunks: Vec<Result<RecordBatch>> = (0..batch.num_rows())
                .step_by(batch_size.max(1))
                .map(|offset| Ok(batch.slice(offset, batch_size.min(batch.num_rows() - offset))))
                .collect();
            Ok::<_, datafusion::error::DataFusionError>(futures::stream::iter(chunks))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            out,
        )))
    }
}

/// The groups of one partition and their accumulators.
struct Groups {
    group: Arc<dyn PhysicalExpr>,
    aggregates: Vec<Aggregate>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    /// Group of each text seen.
    ids: HashMap<Box<str>, usize>,
    /// Text of each group, `None` for the group of nulls.
    names: Vec<Option<Box<str>>>,
    null_group: Option<usize>,
    /// The dictionary the slots are for: the values of the last batch.
    dictionary: Option<ArrayRef>,
    /// Group of each key of that dictionary, `usize::MAX` before its first use.
    slots: Vec<usize>,
    /// Group of each row of the batch being added.
    rows: Vec<usize>,
    reservation: MemoryReservation,
}

impl Groups {
    fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let column = self.group.evaluate(batch)?.into_array(n)?;
        let dictionary = column.as_any_dictionary();
        let values = dictionary.values();
        // Batches of one column chunk share their dictionary: keep the
        // groups found for its keys.
        if !self
            .dictionary
            .as_ref()
            .is_some_and(|d| Arc::ptr_eq(d, values))
        {
            self.dictionary = Some(values.clone());
            self.slots.clear();
            self.slots.resize(values.len(), usize::MAX);
        }
        let text = values.as_string::<i32>();
        // A column chunk of nulls alone has an empty dictionary, and no
        // key of it points anywhere.
        let keys = match values.is_empty() {
            true => vec![usize::MAX; n],
            false => dictionary.normalized_keys(),
        };
        // Nulls of the keys and of the values they point to.
        let nulls = column.logical_nulls();
        self.rows.clear();
        self.rows.reserve(n);
        for (row, &key) in keys.iter().enumerate() {
            let id = if key == usize::MAX || nulls.as_ref().is_some_and(|b| b.is_null(row)) {
                self.null_id()
            } else {
                match self.slots[key] {
                    usize::MAX => {
                        let id = self.text_id(text.value(key));
                        self.slots[key] = id;
                        id
                    }
                    id => id,
                }
            };
            self.rows.push(id);
        }
        let total = self.names.len();
        for (a, acc) in self.aggregates.iter().zip(self.accumulators.iter_mut()) {
            let arguments = a
                .arguments
                .iter()
                .map(|e| e.evaluate(batch).and_then(|v| v.into_array(n)))
                .collect::<Result<Vec<_>>>()?;
            let filter = match &a.filter {
                Some(f) => Some(f.evaluate(batch)?.into_array(n)?.as_boolean().clone()),
                None => None,
            };
            acc.update_batch(&arguments, &self.rows, filter.as_ref(), total)?;
        }
        let size = self.accumulators.iter().map(|a| a.size()).sum::<usize>()
            + self
                .names
                .iter()
                .flatten()
                .map(|s| 2 * s.len() + 48)
                .sum::<usize>()
            + (self.slots.capacity() + self.rows.capacity()) * size_of::<usize>();
        self.reservation.try_resize(size)
    }

    fn null_id(&mut self) -> usize {
        *self.null_group.get_or_insert_with(|| {
            self.names.push(None);
            self.names.len() - 1
        })
    }

    fn text_id(&mut self, text: &str) -> usize {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        let id = self.names.len();
        self.names.push(Some(text.into()));
        self.ids.insert(text.into(), id);
        id
    }

    /// One row per group: the group's text, then each aggregate's value
    /// (`values`) or partial state.
    fn emit(&mut self, schema: &SchemaRef, values: bool) -> Result<RecordBatch> {
        if self.names.is_empty() {
            return Ok(RecordBatch::new_empty(schema.clone()));
        }
        let text: StringArray = self.names.iter().map(|n| n.as_deref()).collect();
        let mut columns = vec![cast(&text, schema.field(0).data_type())?];
        for acc in &mut self.accumulators {
            if values {
                columns.push(acc.evaluate(EmitTo::All)?);
            } else {
                columns.extend(acc.state(EmitTo::All)?);
            }
        }
        self.reservation.free();
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{DictionaryArray, Float64Array, Int8Array, Int32Array};
    use datafusion::arrow::datatypes::{Field, Int8Type, Int32Type, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// Partitions of batches grouped by `g` (keys Int32) and `h` (keys
    /// Int8): batches sharing a dictionary, dictionaries that differ,
    /// the same text under two keys, null keys, keys to a null value, null keys over an empty dictionary.
    fn partitions() -> (SchemaRef, Vec<Vec<RecordBatch>>) {
        let dict = |t: DataType| DataType::Dictionary(Box::new(t), Box::new(DataType::Utf8));
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", dict(DataType::Int32), true),
            Field::new("h", dict(DataType::Int8), true),
            Field::new("x", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let shared: ArrayRef = Arc::new(StringArray::from(vec![
            Some("Paris"),
            Some("Lyon"),
            None,
            Some("Paris"),
            Some("Nantes"),
        ]));
        let other: ArrayRef = Arc::new(StringArray::from(vec!["Lyon", "Brest", "Paris"]));
        // What Parquet reads from a column chunk of nulls alone.
        let none: ArrayRef = Arc::new(StringArray::from(Vec::<&str>::new()));
        let h_values: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), None, Some("b")]));
        let batch = |g_keys: Vec<Option<i32>>, g_values: &ArrayRef, seed: i32| {
            let n = g_keys.len();
            let g =
                DictionaryArray::<Int32Type>::try_new(Int32Array::from(g_keys), g_values.clone())
                    .unwrap();
            let h = DictionaryArray::<Int8Type>::try_new(
                Int8Array::from_iter((0..n).map(|i| (i % 4 != 3).then_some((i % 3) as i8))),
                h_values.clone(),
            )
            .unwrap();
            let x = Float64Array::from_iter((0..n).map(|i| {
                let v = (i as i32 * 7 + seed) % 11;
                (v != 4).then_some(f64::from(v) * 1.5)
            }));
            let s = StringArray::from_iter(
                (0..n).map(|i| (i % 5 != 0).then(|| format!("s{}", (i * 13) % 7))),
            );
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(g), Arc::new(h), Arc::new(x), Arc::new(s)],
            )
            .unwrap()
        };
        let keys = |n: usize, m: i32, nulls: usize| -> Vec<Option<i32>> {
            (0..n)
                .map(|i| (i % nulls != 1).then_some((i as i32 * 3) % m))
                .collect()
        };
        let partitions = vec![
            vec![
                batch(keys(40, 5, 7), &shared, 1),
                batch(keys(33, 5, 5), &shared, 2),
                batch(keys(20, 3, 9), &other, 3),
            ],
            vec![
                batch(keys(17, 3, 4), &other, 4),
                batch(vec![None; 6], &none, 7),
                batch(keys(25, 5, 6), &shared, 5),
            ],
            vec![batch(vec![], &shared, 6)],
        ];
        (schema, partitions)
    }

    async fn answers(rule: bool, targets: usize, queries: &[&str]) -> Vec<(String, bool)> {
        let config = SessionConfig::new()
            .with_target_partitions(targets)
            .with_batch_size(8);
        let mut builder = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features();
        if rule {
            builder = builder.with_physical_optimizer_rule(Arc::new(DictionaryGroups));
        }
        let ctx = SessionContext::new_with_state(builder.build());
        let (schema, data) = partitions();
        ctx.register_table("t", Arc::new(MemTable::try_new(schema, data).unwrap()))
            .unwrap();
        let mut out = Vec::new();
        for q in queries {
            let df = crate::engine::guard::guarded(&ctx, q).await.unwrap();
            let plan = df.clone().create_physical_plan().await.unwrap();
            let shown = datafusion::physical_plan::displayable(plan.as_ref())
                .indent(true)
                .to_string();
            let mut batches = df.collect().await.unwrap();
            // Zero rows print the same whether or not an empty batch came.
            batches.retain(|b| b.num_rows() > 0);
            out.push((
                pretty_format_batches(&batches).unwrap().to_string(),
                shown.contains("DictionaryGroupsExec"),
            ));
        }
        out
    }

    /// Every query answers as DataFusion's own grouping does, with one
    /// partition (a single-step aggregation) and with several (partial
    /// states merged after a repartition); the node is used where it
    /// applies and only there.
    #[tokio::test]
    async fn grouping_by_dictionary_text_answers_as_datafusion_does() {
        let queries: &[(&str, bool)] = &[
            (
                "SELECT g, count(*) AS n FROM t GROUP BY g ORDER BY g NULLS FIRST",
                true,
            ),
            (
                "SELECT h, count(x), sum(x), min(x), max(x), avg(x), min(s), max(s) FROM t \
                 GROUP BY h ORDER BY h NULLS FIRST",
                true,
            ),
            (
                "SELECT g, count(*) FILTER (WHERE x > 5) AS big, sum(x) FILTER (WHERE s = 's3') AS s3 \
                 FROM t GROUP BY g ORDER BY g NULLS FIRST",
                true,
            ),
            (
                "SELECT g, count(*) AS n FROM t WHERE x IS NOT NULL GROUP BY g HAVING count(*) > 3 \
                 ORDER BY n DESC, g LIMIT 3",
                true,
            ),
            ("SELECT count(*) AS n FROM t GROUP BY g ORDER BY n", true),
            ("SELECT g, count(*) FROM t WHERE x > 1000 GROUP BY g", true),
            // Planned as groups of (g, x), then of g.
            (
                "SELECT g, count(DISTINCT x) FROM t GROUP BY g ORDER BY g NULLS FIRST",
                true,
            ),
            (
                "SELECT g, count(DISTINCT x), count(DISTINCT s) FROM t GROUP BY g ORDER BY g NULLS FIRST",
                false,
            ),
            (
                "SELECT g, h, count(*) FROM t GROUP BY g, h ORDER BY g NULLS FIRST, h NULLS FIRST",
                false,
            ),
            (
                "SELECT s, count(*) FROM t GROUP BY s ORDER BY s NULLS FIRST",
                false,
            ),
        ];
        let sql: Vec<&str> = queries.iter().map(|(q, _)| *q).collect();
        for partitions in [1, 3] {
            let expected = answers(false, partitions, &sql).await;
            let got = answers(true, partitions, &sql).await;
            for (((q, applies), (want, _)), (have, used)) in queries.iter().zip(&expected).zip(&got)
            {
                assert_eq!(have, want, "{q} with {partitions} partition(s)");
                assert_eq!(used, applies, "{q} with {partitions} partition(s)");
            }
        }
    }
}
