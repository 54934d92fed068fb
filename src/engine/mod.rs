//! The DataFusion rooms' common ground: the session over one version of a
//! base (tables, caches, memory limit), the functions it registers, the
//! tables of ad-hoc SQL, the read-only guard, the time limit of a query and
//! the grouping of dictionary-encoded text, filters on the event type
//! answered by the layout of the events files, Parquet page indexes parsed
//! once per file. `compile` plans criteria on it;
//! `sql` serves queries from it.

pub mod by_type;
pub mod deadline;
pub mod groups;
pub mod guard;
pub mod page_index;
pub mod session;
pub mod tables;
pub mod udf;

pub use session::Session;
