//! corral: an active-active layer in front of a pool of SAP Cloud Integration tenants.
//!
//! The crate is a library with one thin binary (`src/main.rs`) so that integration tests and
//! benchmarks can reach the same code the binary runs. Layering: see `docs/architecture.md`.

pub mod emulator;
