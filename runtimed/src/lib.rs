//! runtimed: the sidecar at the heart of kruntimes. It executes Runs through a
//! Runtime Server (the built-in bash and python servers in local mode, or any
//! server speaking `kruntimes.runtime.v1`), keeps each Run's output in an
//! on-disk spool, and serves the `kruntimes.runtimed.v1` API.

pub mod attempt;
pub mod collect;
pub mod config;
pub mod drain;
pub mod error;
pub mod follow;
pub mod forgets;
pub mod metrics;
pub mod outputs;
pub mod records;
pub mod recovery;
pub mod run;
pub mod runtime_server;
pub mod server;
pub mod service;
pub mod shelf;
pub mod spool;
pub mod supervisor;
pub mod tidy;
pub mod validate;
pub mod workspace;

pub use config::Config;
pub use server::serve;
