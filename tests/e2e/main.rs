//! The integration and end-to-end suites, one test binary (linking the AWS SDK once), one module per
//! suite. Most need the local stack (`tests/harness/up`, `HARNESS_ENV`); run one suite with
//! `cargo test --features failpoints --test e2e safety::`.
//!
//! All suites share one process and one stack, and tests run in parallel (`--test-threads 4` in
//! `scripts/test`): see `support` for what a test must hold while it changes what others can see.

mod support;

mod backup;
mod backup_api;
mod chart_identity;
mod cleanup;
mod crash_points;
mod helm_chart;
mod iam_policy;
mod in_cluster;
mod leader;
mod monitoring;
mod prepare;
mod rbac_rules;
mod safety;
mod schedule;
mod stack;
mod status_subresource;
mod throttle;
mod tls;
