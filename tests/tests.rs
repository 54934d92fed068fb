//! The integration tests of segments: one binary, a module per capability.

mod suite {
    /// Imports, upserts, bad input, deletion, snapshots.
    pub mod base;
    /// The command line on small bases in testdata/.
    pub mod cli;
    /// Shared helpers: temporary bases, CSV writers, evaluation shortcuts.
    pub mod common;
    /// Every durable step of every writing command, crashed in turn.
    pub mod crash;
    /// Random criteria trees: the DataFusion path equals the reference.
    pub mod differential;
    /// Arbitrary and mutated definitions: a result or a clear error, never a panic.
    pub mod fuzz;
    /// Segment lifecycle, recompute, history, audience.
    pub mod lifecycle;
    /// Every operator of every type, with the empty-value rules both ways.
    pub mod operators;
    /// Plain-Rust reference evaluator written from the SPEC (tests only).
    pub mod reference;
    /// Validation errors with JSON paths, cycles.
    pub mod validation;
}
