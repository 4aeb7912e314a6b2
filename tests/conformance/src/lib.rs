//! The Runtime Server conformance suite: checks that a server speaking
//! `kruntimes.runtime.v1` keeps the protocol's contract (exit statuses,
//! env, working directories, output streams, Attach offsets, back-pressure,
//! Cancel and timeout of whole process groups, concurrency, reaping, errors).
//!
//! Each check in [`checks`] is an async function taking the
//! [`ServerUnderTest`] and returning `Err(Failure)` when the server is wrong.
//! The integration test target `tests/conformance.rs` runs each one against
//! the server chosen by the environment; see `README.md`.
pub mod checks;
pub mod client;
mod error;
pub mod procfs;
pub mod server;

pub use error::Failure;
pub use server::ServerUnderTest;
