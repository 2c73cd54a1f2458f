//! The manifest as written: serde shapes with unknown keys rejected. [`super::Manifest::plan`]
//! turns this into a [`super::Plan`]; the engine never sees these types.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

/// `dropship.yml`, version 1.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "dropship.yml",
    description = "A repository's Dropship manifest (version 1)"
)]
pub(crate) struct RawManifest {
    /// The manifest format version. Only `1` exists.
    pub(crate) version: u32,
    /// Deployment environments by name, as GitHub's `environment` field names them.
    pub(crate) environments: BTreeMap<String, RawEnvironment>,
    /// Tasks by name, as GitHub's `task` field names them (`deploy` is the default task).
    pub(crate) tasks: BTreeMap<String, Vec<RawStep>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEnvironment {
    /// Server names or roles from the operator config.
    pub(crate) servers: Vec<String>,
    /// Becomes the deployment status's `environment_url`. Expressions are allowed.
    pub(crate) url: Option<String>,
    /// How a step's servers run: all at once, or in rolling batches.
    #[serde(default)]
    pub(crate) strategy: RawStrategy,
    /// With `strategy: rolling`: servers per batch, as a count (`2`) or a percentage (`"25%"`).
    pub(crate) batch: Option<RawBatch>,
    /// With `strategy: rolling`: the wait between batches (`30s`).
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub(crate) pause: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawStrategy {
    #[default]
    Parallel,
    Rolling,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub(crate) enum RawBatch {
    Count(u32),
    Percent(String),
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStep {
    /// Shown in logs, statuses and the deployment page.
    pub(crate) name: String,
    /// A shell script (`sh`), run on each of the step's servers.
    pub(crate) run: Option<String>,
    /// `all` (default) of the environment's servers, the `first` one, a server name or a role.
    pub(crate) on: Option<String>,
    /// The longest the step may run on one server (`10m` by default); then it is killed.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub(crate) timeout: Option<Duration>,
    /// Extra environment variables. Expressions are allowed in values.
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
    /// Names of secrets that the operator config provides for this repository; each is
    /// exported as an environment variable of that name and never logged.
    #[serde(default)]
    pub(crate) secrets: Vec<String>,
    /// The directory the script starts in (default: the login directory).
    pub(crate) working_dir: Option<String>,
    /// A failure here is recorded but does not stop the task.
    #[serde(default)]
    pub(crate) continue_on_error: bool,
}
