//! The harness the benchmarks share.
