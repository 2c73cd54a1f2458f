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
    /// Preview environments: deployments to environments that are not defined here but match
    /// `environments` (or that GitHub calls transient) are run like environment `like`, with
    /// their own host for each proxied app.
    pub(crate) previews: Option<RawPreviews>,
    /// Deployments Dropship creates by itself when a branch moves: on `push`, or once every
    /// check on the pushed commit has passed (`checks`).
    #[serde(default)]
    pub(crate) auto_deploy: Vec<RawAutoDeploy>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAutoDeploy {
    /// The branch, or a glob of branches (`release/*`).
    pub(crate) branch: String,
    /// The environment to deploy to; it must be defined under `environments`.
    pub(crate) environment: String,
    /// `push` deploys each push at once; `checks` waits until every check suite on the pushed
    /// commit has completed successfully.
    #[serde(default)]
    pub(crate) on: AutoDeployTrigger,
    /// The task to run (default `deploy`).
    pub(crate) task: Option<String>,
}

/// When an auto-deploy rule fires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AutoDeployTrigger {
    #[default]
    Push,
    Checks,
}

impl AutoDeployTrigger {
    /// The name a manifest writes (`on: push`), as records and payloads carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            AutoDeployTrigger::Push => "push",
            AutoDeployTrigger::Checks => "checks",
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPreviews {
    /// A glob of environment names (`pr-*`).
    pub(crate) environments: Option<String>,
    /// The defined environment whose servers and strategy previews use.
    pub(crate) like: String,
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
    /// The longest a whole deployment to this environment may run (`45m`); past it, its
    /// running steps are killed and it ends `error`. Default: the operator's
    /// `[server] deployment_timeout`.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub(crate) timeout: Option<Duration>,
    /// Lets a deployment whose payload carries `{"image": ..., "port": ..., "env": {...},
    /// "cmd": ...}` deploy that image here instead of running the task's steps.
    #[serde(default)]
    pub(crate) allow_payload_image: bool,
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
    /// Instead of `run`: a container app, replaced on each server behind a health check.
    pub(crate) container: Option<RawContainer>,
    /// Instead of `run`: a Compose stack, copied to each server and brought up.
    pub(crate) compose: Option<RawCompose>,
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

/// A string, or a list of strings (an exec-form command).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub(crate) enum RawCommand {
    Shell(String),
    Exec(Vec<String>),
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawContainer {
    /// The app's name on the server (default: the repository's name). Containers are named
    /// `APP-ENVIRONMENT-DEPLOYMENT-REPLICA`.
    pub(crate) name: Option<String>,
    /// The image to pull (`registry/name`); the tag comes from `tag`. Or use `build`.
    pub(crate) image: Option<String>,
    /// Build the image from the repository at the deployment's sha instead of pulling one.
    pub(crate) build: Option<RawBuild>,
    /// The image tag (default: the deployment's sha).
    pub(crate) tag: Option<String>,
    /// Overrides the image's command: a string (run with `sh -c`) or a list.
    pub(crate) command: Option<RawCommand>,
    /// Environment variables. Expressions are allowed in values.
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
    /// Secrets from the operator config, passed as environment variables, never shown.
    #[serde(default)]
    pub(crate) secrets: Vec<String>,
    /// `CONTAINER`, `HOST:CONTAINER` or `IP:HOST:CONTAINER`, with an optional `/udp`.
    #[serde(default)]
    pub(crate) ports: Vec<String>,
    /// `SOURCE:TARGET[:ro]`: a named volume or a path on the server.
    #[serde(default)]
    pub(crate) volumes: Vec<String>,
    /// Extra labels (Dropship's own `dropship.*` labels are always set).
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
    /// `no`, `always`, `unless-stopped` (default) or `on-failure`.
    pub(crate) restart: Option<String>,
    /// A memory limit: `512m`, `2g`.
    pub(crate) memory: Option<String>,
    /// A CPU limit, in CPUs: `0.5`.
    pub(crate) cpus: Option<f64>,
    /// A Docker network to join; it is created if missing.
    pub(crate) network: Option<String>,
    /// Run Docker's init as PID 1, which passes signals on and reaps zombies: an app that
    /// ignores SIGTERM as PID 1 then stops at once instead of after `stop_timeout`.
    #[serde(default)]
    pub(crate) init: bool,
    /// Containers per server (default 1).
    pub(crate) replicas: Option<u32>,
    /// How a new container proves it is ready before the old one stops.
    pub(crate) healthcheck: Option<RawHealthcheck>,
    /// Retired versions kept (stopped) on each server for rollback (default 3).
    pub(crate) keep: Option<u32>,
    /// Route users' traffic for these hosts to the app's healthy containers through
    /// Dropship's proxy.
    pub(crate) proxy: Option<RawProxy>,
    /// How long an old container gets to stop before it is killed (default `10s`).
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub(crate) stop_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBuild {
    /// The build context, a directory of the repository (default `.`).
    pub(crate) context: Option<String>,
    /// The Dockerfile, relative to the context (default `Dockerfile`).
    pub(crate) dockerfile: Option<String>,
    /// Build arguments. Expressions are allowed in values.
    #[serde(default)]
    pub(crate) args: BTreeMap<String, String>,
    /// A build stage to stop at.
    pub(crate) target: Option<String>,
    /// Build once on this server and push to the operator's `containers.build_registry`;
    /// the others pull. Default: every server builds for itself.
    pub(crate) builder: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthcheck {
    /// An HTTP path (`/up`) requested on `port`; 2xx and 3xx are healthy.
    pub(crate) path: Option<String>,
    /// The container port for `path` (default: the first of `ports`).
    pub(crate) port: Option<u16>,
    /// Or a command run inside the container; exit 0 is healthy.
    pub(crate) command: Option<RawCommand>,
    /// Between probes (default `1s`).
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub(crate) interval: Option<Duration>,
    /// For one probe (default `5s`).
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub(crate) timeout: Option<Duration>,
    /// Failed probes in a row after `start_period` that mean unhealthy (default 10).
    pub(crate) retries: Option<u32>,
    /// A grace period in which failures do not count (default `0s`).
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub(crate) start_period: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCompose {
    /// Compose file(s) in the repository (default `docker-compose.yml`).
    pub(crate) file: Option<RawFiles>,
    /// The Compose project name (default: REPO-ENVIRONMENT): letters, digits, `_` and `-`.
    pub(crate) project: Option<String>,
    /// Variables for Compose's interpolation. Expressions are allowed in values.
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub(crate) enum RawFiles {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxy {
    /// Host names (the operator config must allow each for this repository).
    pub(crate) hosts: Vec<String>,
    /// Only requests under this path (default `/`).
    pub(crate) path_prefix: Option<String>,
    /// The container port that serves them (default: the health check's, else the first of
    /// `ports`).
    pub(crate) port: Option<u16>,
}
