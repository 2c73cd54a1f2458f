//! Dropship turns GitHub deployments into real deployments on your own servers.
//!
//! The modules, in the order a deployment meets them:
//!
//! - [`config`]: the operator's configuration (servers, keys, secrets, which repos may deploy where).
//! - [`webhook`]: pure parsing and signature checks of GitHub webhook deliveries.
//! - [`http`]: the axum router: webhook intake, the deployment pages and the JSON API.
//! - [`store`]: durable records (deployments, steps, log lines, the status outbox) in SQLite.
//! - [`manifest`]: pure parsing and validation of `dropship.yml` into a [`manifest::Plan`].
//! - [`deploy`]: the deployment engine's services: the runner of plans, the scheduler that
//!   orders deployments, intake, the people's actions, environments, auto-deploy, the survey.
//! - [`exec`]: command runners: SSH (through the system OpenSSH client) and local.
//! - [`containers`]: each server's Docker engine (bollard), reached over SSH, locally or TLS.
//! - [`github`]: the GitHub API client, manifest fetching and the status outbox.
//! - [`logs`]: the live event bus that pages and the CLI follow.
//! - [`keys`]: Dropship's own secret key (outside the database) and the capability tokens derived from it.
//! - [`metrics`]: the Prometheus metrics `/metrics` serves.
//! - `listen`: the capped accept loop both the web listener and the proxy's use.
//! - [`proxy`]: the edge proxy that routes users' HTTP traffic to the apps' healthy containers.
//! - [`sha`]: a commit's id.
//! - [`server`]: wires the pieces into the running service.
//! - [`cli`]: the `dropship` command line.

pub mod cli;
pub mod config;
pub mod containers;
pub mod deploy;
pub mod exec;
pub mod github;
pub mod http;
pub mod image;
pub mod keys;
pub(crate) mod listen;
pub mod logs;
pub mod manifest;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod sha;
pub mod store;
pub mod webhook;

#[cfg(test)]
mod fuzz;
