//! Tests of one dictionary-encoded column, evaluated once per distinct value.
//!
//! Text columns with repeated values (event types, operations, URLs, cities)
//! are stored dictionary-encoded and read as dictionaries: a batch is a
//! small array of distinct values and one integer key per row. A condition
//! that reads only such a column is evaluated on the values, then looked up
//! by key for every row, instead of comparing or lower-casing a string per
//! row.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, new_null_array,
};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;

use crate::engine::Session;
use crate::error::Result;

/// A boolean expression over one dictionary column.
#[derive(Debug)]
pub struct DictionaryTest {
    /// One column of the dictionary's value type, named as the expression
    /// reads it.
    schema: SchemaRef,
    test: Arc<dyn PhysicalExpr>,
    /// The outcome for a row whose value is null.
    on_null: bool,
}

impl DictionaryTest {
    /// The test `e` over `field`, when the field is dictionary-typed and `e`
    /// reads that column only; `None` otherwise.
    pub fn new(session: &Session, e: &Expr, field: &Field) -> Result<Option<DictionaryTest>> {
        let DataType::Dictionary(_, value) = field.data_type() else {
            return Ok(None);
        };
        let refs = e.column_refs();
        if refs.len() != 1 || refs.iter().any(|c| c.name != *field.name()) {
            return Ok(None);
        }
        let schema = Arc::new(Schema::new(vec![Field::new(
            field.name(),
            value.as_ref().clone(),
            true,
        )]));
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let test = session.physical_expr(e.clone(), &df_schema)?;
        let null = RecordBatch::try_new(schema.clone(), vec![new_null_array(value, 1)])?;
        let on_null = true_bits(test.evaluate(&null)?.into_array(1)?.as_boolean()).value(0);
        Ok(Some(DictionaryTest {
            schema,
            test,
            on_null,
        }))
    }

    /// The outcome of the test for each of a dictionary's values.
    pub fn truth(&self, values: ArrayRef) -> Result<Vec<bool>> {
        let value_type = self.schema.field(0).data_type();
        let values = if values.data_type() == value_type {
            values
        } else {
            datafusion::arrow::compute::cast(&values, value_type)?
        };
        let n = values.len();
        let batch = RecordBatch::try_new(self.schema.clone(), vec![values])?;
        let truth = self.test.evaluate(&batch)?.into_array(n)?;
        Ok(true_bits(truth.as_boolean()).iter().collect())
    }

    /// The outcome of the test for a null value.
    pub fn on_null(&self) -> bool {
        self.on_null
    }

    /// The rows of a column (a dictionary, or plain values that are
    /// encoded first) for which the test is true.
    pub fn evaluate(&self, column: &ArrayRef) -> Result<BooleanBuffer> {
        let value_type = self.schema.field(0).data_type();
        let dict = match column.as_dictionary_opt::<Int32Type>() {
            Some(d) if d.values().data_type() == value_type => d.clone(),
            _ => datafusion::arrow::compute::cast(
                column,
                &DataType::Dictionary(Box::new(DataType::Int32), Box::new(value_type.clone())),
            )?
            .as_dictionary::<Int32Type>()
            .clone(),
        };
        let lut = self.truth(dict.values().clone())?;
        // Keys of null rows may be anything: they are looked up safely and
        // their outcome replaced below.
        let keys = dict.keys().values();
        let hits = BooleanBuffer::collect_bool(keys.len(), |i| {
            lut.get(keys[i] as usize).copied().unwrap_or(false)
        });
        Ok(match dict.keys().nulls() {
            None => hits,
            Some(valid) if self.on_null => &hits | &!valid.inner(),
            Some(valid) => &hits & valid.inner(),
        })
    }
}

/// The rows where a boolean is true (null counts as false, as in WHERE).
pub fn true_bits(b: &BooleanArray) -> BooleanBuffer {
    match b.nulls() {
        Some(valid) => b.values() & valid.inner(),
        None => b.values().clone(),
    }
}

/// Whether a column of this type is read as a dictionary.
pub fn is_dictionary(dt: &DataType) -> bool {
    matches!(dt, DataType::Dictionary(..))
}
