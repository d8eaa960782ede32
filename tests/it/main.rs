//! The one integration-test binary: every module drives a real gateway through HTTP, on
//! SQLite and on PostgreSQL (see `support::both_backends!`).

// Benchmarks and tests stop loudly: the lints that keep panics out of the server do not
// apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

mod app_launch;
mod attachments;
mod audit;
mod board;
mod bundles;
mod concurrency;
mod conditional;
mod conformance;
mod crud;
mod errors;
mod history;
mod imports;
mod nodes;
mod openid_provider;
mod operations;
mod policy;
mod policy_model;
mod policy_table;
mod production;
mod http_semantics;
mod scale;
mod search;
mod search_basic;
mod security;
mod structure;
mod subscriptions;
mod upstream_login;
mod smart;
mod validation;
