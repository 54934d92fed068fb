//! A time limit on a query (a statement timeout): a node at the root of its
//! plan ends the query's stream with an error once the time is up, and
//! drops the streams below it, which stops their work. The clock starts
//! when the query starts running, and the node travels with a prepared
//! statement's plan until it is executed. The same node counts the
//! statements of a connection running at a time ([`Running`]), which a
//! server asks before closing a connection as idle.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchemaRef, DataFusionError};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, RecordBatchStream,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::Stream;

/// The message of a query stopped by its time limit (as PostgreSQL's).
pub const TIMEOUT_MESSAGE: &str = "canceling statement due to statement timeout";

/// `plan`, stopped when it runs longer than `limit`, and counted in
/// `running` while its rows are produced; `plan` itself without either.
pub fn with_deadline(
    plan: LogicalPlan,
    limit: Option<Duration>,
    running: Option<Arc<Running>>,
) -> LogicalPlan {
    if limit.is_none() && running.is_none() {
        return plan;
    }
    // `EXPLAIN` must stay at the root: the limit goes on what it explains
    // (and runs, with `ANALYZE`).
    if matches!(plan, LogicalPlan::Explain(_) | LogicalPlan::Analyze(_)) {
        return plan
            .map_children(|child| {
                Ok(Transformed::yes(with_deadline(
                    child,
                    limit,
                    running.clone(),
                )))
            })
            .expect("wrapping a child cannot fail")
            .data;
    }
    LogicalPlan::Extension(Extension {
        node: Arc::new(Deadline {
            input: plan,
            limit,
            running: running.map(RunningRef),
        }),
    })
}

/// The statements of one connection whose rows are being produced.
#[derive(Debug, Default)]
pub struct Running(AtomicUsize);

impl Running {
    /// Whether a statement is running now.
    pub fn any(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }
}

/// One more running statement, until dropped.
struct RunningGuard(Arc<Running>);

impl RunningGuard {
    fn new(running: Arc<Running>) -> RunningGuard {
        running.0.fetch_add(1, Ordering::SeqCst);
        RunningGuard(running)
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection's [`Running`], compared by identity (a plan node must be
/// comparable and hashable).
#[derive(Debug, Clone)]
struct RunningRef(Arc<Running>);

impl PartialEq for RunningRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for RunningRef {}

impl std::hash::Hash for RunningRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state);
    }
}

impl PartialOrd for RunningRef {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        (Arc::as_ptr(&self.0) as usize).partial_cmp(&(Arc::as_ptr(&other.0) as usize))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
struct Deadline {
    input: LogicalPlan,
    limit: Option<Duration>,
    running: Option<RunningRef>,
}

impl UserDefinedLogicalNodeCore for Deadline {
    fn name(&self) -> &str {
        "Deadline"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.limit {
            Some(limit) => write!(f, "Deadline: {limit:?}"),
            None => write!(f, "Deadline: none"),
        }
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> datafusion::error::Result<Self> {
        Ok(Deadline {
            input: inputs.swap_remove(0),
            limit: self.limit,
            running: self.running.clone(),
        })
    }
}

/// The query planner of the sessions: DataFusion's, which also plans
/// [`Deadline`] nodes.
#[derive(Debug)]
pub struct Planner;

#[async_trait]
impl QueryPlanner for Planner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn datafusion::catalog::Session,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(DeadlinePlanner)])
            .create_physical_plan(logical_plan, session_state)
            .await
    }
}

struct DeadlinePlanner;

#[async_trait]
impl ExtensionPlanner for DeadlinePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn datafusion::logical_expr::UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn datafusion::catalog::Session,
        _planning: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> datafusion::error::Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(deadline) = node.as_any().downcast_ref::<Deadline>() else {
            return Ok(None);
        };
        Ok(Some(Arc::new(DeadlineExec {
            input: physical_inputs[0].clone(),
            limit: deadline.limit,
            running: deadline.running.as_ref().map(|r| r.0.clone()),
        })))
    }
}

#[derive(Debug)]
struct DeadlineExec {
    input: Arc<dyn ExecutionPlan>,
    limit: Option<Duration>,
    running: Option<Arc<Running>>,
}

impl DisplayAs for DeadlineExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.limit {
            Some(limit) => write!(f, "DeadlineExec: {limit:?}"),
            None => write!(f, "DeadlineExec: none"),
        }
    }
}

impl ExecutionPlan for DeadlineExec {
    fn name(&self) -> &str {
        "DeadlineExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    /// The rows pass as they come: an `ORDER BY` below stays the order of
    /// the result, and nothing is repartitioned under the node (which
    /// would undo the sort's final merge).
    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(DeadlineExec {
            input: children.swap_remove(0),
            limit: self.limit,
            running: self.running.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        let schema = self.input.schema();
        let input = self.input.execute(partition, context)?;
        Ok(Box::pin(Timed {
            input: Some(input),
            timer: self.limit.map(|limit| Box::pin(tokio::time::sleep(limit))),
            schema,
            running: self.running.clone().map(RunningGuard::new),
        }))
    }
}

/// The input's batches until the timer fires, then the timeout error.
struct Timed {
    input: Option<SendableRecordBatchStream>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    schema: SchemaRef,
    /// Held until the rows end.
    running: Option<RunningGuard>,
}

impl Stream for Timed {
    type Item = datafusion::error::Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.input.is_none() {
            return Poll::Ready(None);
        }
        if let Some(timer) = self.timer.as_mut()
            && timer.as_mut().poll(cx).is_ready()
        {
            // Dropping the input stops the work under it.
            self.input = None;
            self.running = None;
            return Poll::Ready(Some(Err(DataFusionError::External(TIMEOUT_MESSAGE.into()))));
        }
        let polled = self.input.as_mut().map(|i| i.as_mut().poll_next(cx));
        match polled {
            Some(Poll::Ready(None)) | None => {
                self.input = None;
                self.running = None;
                Poll::Ready(None)
            }
            Some(other) => other,
        }
    }
}

impl RecordBatchStream for Timed {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}
