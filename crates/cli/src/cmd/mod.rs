//! One module per `archipelago` subcommand. Each exposes `Args` (clap) and
//! `run(args) -> anyhow::Result<i32>` returning the process exit code.
pub mod account;
pub mod attest;
pub mod attest_list;
pub mod client_opts;
pub mod coordinator;
pub mod dev;
pub mod gateway;
pub mod island;
pub mod jobs;
pub mod keys;
pub mod models;
pub mod run;
pub mod signal;
pub mod stats;
