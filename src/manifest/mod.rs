//! `dropship.yml`: parsed, then validated into a [`Plan`] for one deployment.
//!
//! Two stages, each reporting every problem with its line and column:
//! 1. [`Manifest::parse`]: YAML and shape (unknown keys, types), intrinsic rules (version,
//!    strategy, expressions, names).
//! 2. [`Manifest::plan`]: against one deployment and the operator's [`Inventory`]: the task and
//!    environment exist, servers and roles resolve to servers the repo may use, secrets exist.
//!
//! Architecture invariant: this module does no IO. It receives text and returns values.

mod compose_policy;
mod containers;
mod expr;
mod positions;
mod raw;
mod shell;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

pub use compose_policy::check_compose_file;
pub use containers::{
    BuildPlan, ComposePlan, ContainerPlan, DEFAULT_COMPOSE_FILE, HealthCheck, ImageSource,
    PortMapping, Probe, ProxyPlan, default_app, namespaced_name, namespaced_project, repo_digest,
    safe_relative_path, valid_project,
};
pub use expr::Context;
pub use positions::Position;

use expr::{Quoting, occurrences, parse_reference, substitute};
use positions::Positions;
pub use raw::AutoDeployTrigger;
use raw::{RawBatch, RawManifest, RawStep, RawStrategy};

/// The default timeout of a step on one server.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(600);

/// The names a manifest may have, in the order they are looked up at the repository root.
pub const FILE_NAMES: [&str; 2] = ["dropship.yml", ".github/dropship.yml"];

/// One problem, with the file and position it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub position: Option<Position>,
    pub message: String,
}

impl Diagnostic {
    /// A problem with a whole file, with no position in it.
    pub fn about_file(file: impl Into<String>, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: file.into(),
            position: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(p) => write!(f, "{}:{}:{}: {}", self.file, p.line, p.column, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Every problem found; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl Diagnostics {
    pub fn first(&self) -> &Diagnostic {
        &self.0[0]
    }
}

/// A manifest that passed stage 1.
#[derive(Debug, Clone)]
pub struct Manifest {
    file: String,
    raw: RawManifest,
    positions: Positions,
}

/// A server that the operator config defines, as the planner sees it.
#[derive(Debug, Clone)]
pub struct InventoryServer {
    pub name: String,
    pub roles: Vec<String>,
    /// Whether the operator config lets this repository use it.
    pub allowed: bool,
}

/// What the operator config offers one repository.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub repo: String,
    pub servers: Vec<InventoryServer>,
    /// Names of the secrets this repository may use (never their values).
    pub secrets: BTreeSet<String>,
    /// Host patterns this repository may route (`shop.example.com`, `*.example.com`).
    pub hosts: Vec<String>,
    /// Preview environments' hosts are `APP-ENVIRONMENT.preview_domain`.
    pub preview_domain: Option<String>,
    /// `https` when the proxy serves TLS, else `http`: the scheme of a preview's URL.
    pub preview_scheme: String,
    /// What this repository's containers may do beyond an ordinary container; `None` checks
    /// nothing (`dropship validate` without a repository).
    pub containers: Option<crate::config::ContainerPolicy>,
}

impl Inventory {
    /// What `config` offers repository `repo` through its `[[repos]]` entry; without an entry,
    /// everything the config defines (`dropship validate` without a repository).
    pub fn from_config(
        config: &crate::config::Config,
        repo: &str,
        entry: Option<&crate::config::RepoEntry>,
    ) -> Inventory {
        let servers = config
            .servers
            .iter()
            .map(|s| InventoryServer {
                name: s.name.clone(),
                roles: s.roles.clone(),
                allowed: entry.is_none_or(|e| e.allows_server(s)),
            })
            .collect();
        let secrets = match entry {
            Some(e) => e.secrets.keys().cloned().collect(),
            None => config
                .repos
                .iter()
                .flat_map(|r| r.secrets.keys().cloned())
                .collect(),
        };
        let hosts = match entry {
            Some(e) => e.hosts.clone(),
            None => config.repos.iter().flat_map(|r| r.hosts.clone()).collect(),
        };
        Inventory {
            repo: repo.to_string(),
            servers,
            secrets,
            hosts,
            containers: entry.map(|e| e.containers.clone()),
            preview_domain: config.proxy.preview_domain.clone(),
            preview_scheme: if config.proxy.listen_tls.is_some() {
                "https".into()
            } else {
                "http".into()
            },
        }
    }

    fn allows_host(&self, host: &str) -> bool {
        self.hosts
            .iter()
            .any(|pattern| crate::config::host_matches(pattern, host))
    }
}

/// What the engine runs: one task in one environment, every name resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub task: String,
    pub environment: String,
    pub environment_url: Option<String>,
    /// Every server the environment lists, in order.
    pub servers: Vec<String>,
    pub strategy: Strategy,
    pub steps: Vec<PlannedStep>,
    /// A preview's `stop`: remove everything the environment runs instead of steps.
    pub teardown: bool,
    /// The environment is a preview (by `previews` or GitHub's transient flag).
    pub preview: bool,
    /// The environment's deployment-wide timeout, if the manifest sets one.
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    Parallel,
    Rolling {
        batch: Batch,
        pause: Option<Duration>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Batch {
    Count(u32),
    Percent(u32),
}

impl Batch {
    /// Servers per batch for `total` servers (at least one).
    pub fn size(self, total: usize) -> usize {
        let size = match self {
            Batch::Count(n) => n as usize,
            Batch::Percent(p) => (total * p as usize).div_ceil(100),
        };
        size.clamp(1, total.max(1))
    }
}

/// What a step does on each of its servers.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Runs `script` (a `run:` step).
    Shell,
    /// Replaces a container app behind its health check.
    Container(Box<ContainerPlan>),
    /// Copies a Compose stack and brings it up.
    Compose(ComposePlan),
    /// Starts the previous successful version of an app kept on the server (`task: rollback`).
    Rollback { app: String, stop_timeout: Duration },
    /// Stops an app's running containers, keeping them as retired versions (`task: stop`).
    StopApp { app: String, stop_timeout: Duration },
    /// Brings a Compose stack down (`task: stop`).
    ComposeDown(ComposePlan),
}

impl Action {
    /// A word for logs and pages.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Shell => "run",
            Action::Container(_) => "container",
            Action::Compose(_) => "compose",
            Action::Rollback { .. } => "rollback",
            Action::StopApp { .. } => "stop",
            Action::ComposeDown(_) => "compose down",
        }
    }
}

/// The tasks Dropship plans itself from the `deploy` task when the manifest does not define
/// them.
pub const BUILT_IN_TASKS: [&str; 2] = ["rollback", "stop"];

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedStep {
    pub name: String,
    pub action: Action,
    /// The script, each expression replaced by a reference to a variable in `env` (see
    /// `manifest/shell.rs`); empty unless `Shell`.
    pub script: String,
    /// The servers it runs on, in environment order.
    pub servers: Vec<String>,
    pub timeout: Duration,
    /// Step `env`, expressions substituted, plus the variables the script refers to; the
    /// other `DROPSHIP_*` variables come from [`Context`].
    pub env: BTreeMap<String, String>,
    /// Names of secrets to export; their values are looked up when the step runs.
    pub secrets: Vec<String>,
    pub working_dir: Option<String>,
    pub continue_on_error: bool,
}

/// The manifest's JSON Schema, pretty-printed.
pub fn schema() -> String {
    let schema = schemars::schema_for!(RawManifest);
    serde_json::to_string_pretty(&schema).expect("a schema serializes")
}

struct Collector<'a> {
    file: &'a str,
    positions: &'a Positions,
    found: Vec<Diagnostic>,
}

impl Collector<'_> {
    fn at_key(&mut self, path: &str, message: impl Into<String>) {
        let position = self.positions.key(path);
        self.push(position, message);
    }

    fn at_value(&mut self, path: &str, message: impl Into<String>) {
        let position = self.positions.value(path);
        self.push(position, message);
    }

    fn push(&mut self, position: Option<Position>, message: impl Into<String>) {
        self.found.push(Diagnostic {
            file: self.file.to_string(),
            position,
            message: message.into(),
        });
    }

    fn finish<T>(mut self, value: T) -> Result<T, Diagnostics> {
        if self.found.is_empty() {
            Ok(value)
        } else {
            self.found
                .sort_by_key(|d| d.position.map(|p| (p.line, p.column)));
            Err(Diagnostics(self.found))
        }
    }
}

/// The largest manifest Dropship reads. Real ones are a few KiB; GitHub's contents API serves
/// files up to 1 MB.
pub const MAX_MANIFEST_BYTES: usize = 512 * 1024;

/// The longest duration a manifest may write (a step's timeout, a pause, a health check's
/// interval): one day. Longer values are mistakes, and unbounded ones overflow deadlines.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// The positions of a YAML text read from `file` (`what` names it in messages: "the
/// manifest"), or why it is refused before serde_yaml reads it: larger than
/// [`MAX_MANIFEST_BYTES`], or nested deeper than [`positions::MAX_DEPTH`] (recursive parsers
/// would exhaust the stack, and serde_yaml's time grows with the square of flow nesting).
/// Manifests and compose files both go through here.
fn bounded_positions(file: &str, what: &str, text: &str) -> Result<Positions, Diagnostics> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(Diagnostics(vec![Diagnostic::about_file(
            file,
            format!(
                "{what} is {} bytes; it may be at most {MAX_MANIFEST_BYTES} (512 KiB)",
                text.len()
            ),
        )]));
    }
    let positions = Positions::index(text);
    if let Some(position) = positions.too_deep {
        return Err(Diagnostics(vec![Diagnostic {
            file: file.to_string(),
            position: Some(position),
            message: format!(
                "mappings and lists nest deeper than {} levels here",
                positions::MAX_DEPTH
            ),
        }]));
    }
    Ok(positions)
}

fn check_duration(c: &mut Collector<'_>, path: &str, value: Option<Duration>) {
    if value.is_some_and(|d| d > MAX_DURATION) {
        c.at_value(path, "a duration may be at most 24h");
    }
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Reports the `env` name at `path` (a step's or a container's) unless it is a valid name that
/// does not start with `DROPSHIP_`, which dropship sets itself: no manifest may shadow the
/// variables its scripts refer to.
fn check_env_name(c: &mut Collector<'_>, path: &str, name: &str) {
    if !valid_env_name(name) {
        c.at_key(
            path,
            format!("`{name}` is not a valid environment variable name"),
        );
    } else if name.starts_with("DROPSHIP_") {
        c.at_key(
            path,
            format!("`{name}`: names starting with DROPSHIP_ are set by dropship"),
        );
    }
}

/// One `auto_deploy` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoDeployRule {
    pub branch: String,
    pub environment: String,
    pub on: AutoDeployTrigger,
    pub task: String,
}

impl AutoDeployRule {
    /// Whether a push to (or green checks on) `branch` fire this rule.
    pub fn matches(&self, branch: &str) -> bool {
        crate::config::glob_match(&self.branch, branch)
    }
}

impl Manifest {
    /// The environments the manifest defines, in order.
    pub fn environments(&self) -> Vec<&str> {
        self.raw.environments.keys().map(String::as_str).collect()
    }

    /// Whether a deployment to `environment` can run: it is defined, or a preview by the
    /// `previews` glob.
    pub fn accepts_environment(&self, environment: &str) -> bool {
        self.raw.environments.contains_key(environment)
            || self.raw.previews.as_ref().is_some_and(|p| {
                p.environments
                    .as_deref()
                    .is_some_and(|g| crate::config::glob_match(g, environment))
            })
    }

    /// The `auto_deploy` rules, in the order written.
    pub fn auto_deploy(&self) -> Vec<AutoDeployRule> {
        self.raw
            .auto_deploy
            .iter()
            .map(|rule| AutoDeployRule {
                branch: rule.branch.clone(),
                environment: rule.environment.clone(),
                on: rule.on,
                task: rule.task.clone().unwrap_or_else(|| "deploy".into()),
            })
            .collect()
    }

    /// Stage 1: parses `text`, read from `file` (used in messages).
    pub fn parse(file: &str, text: &str) -> Result<Manifest, Diagnostics> {
        let positions = bounded_positions(file, "the manifest", text)?;
        let raw: RawManifest = match serde_yaml::from_str(text) {
            Ok(raw) => raw,
            Err(error) => return Err(Diagnostics(vec![yaml_diagnostic(file, &error)])),
        };
        let mut c = Collector {
            file,
            positions: &positions,
            found: Vec::new(),
        };
        if raw.version != 1 {
            c.at_value(
                "version",
                format!(
                    "unsupported version {}: this dropship reads version 1",
                    raw.version
                ),
            );
        }
        if raw.environments.is_empty() {
            c.at_key("environments", "at least one environment is required");
        }
        if raw.tasks.is_empty() {
            c.at_key("tasks", "at least one task is required");
        }
        if let Some(previews) = &raw.previews {
            if !raw.environments.contains_key(&previews.like) {
                c.at_value(
                    "previews.like",
                    format!(
                        "previews are like environment `{}`, which is not defined",
                        previews.like
                    ),
                );
            }
        }
        check_auto_deploy(&mut c, &raw);
        for (name, environment) in &raw.environments {
            check_environment(&mut c, text, name, environment);
        }
        for (task, steps) in &raw.tasks {
            check_task(&mut c, text, task, steps);
        }
        c.finish(())?;
        Ok(Manifest {
            file: file.to_string(),
            raw,
            positions,
        })
    }

    pub fn environment_names(&self) -> impl Iterator<Item = &str> {
        self.raw.environments.keys().map(String::as_str)
    }

    pub fn task_names(&self) -> impl Iterator<Item = &str> {
        self.raw.tasks.keys().map(String::as_str)
    }

    /// Every server name or role the manifest mentions, with its position, for checks against
    /// an operator config outside any one deployment (`dropship validate --config`).
    pub fn check_against(&self, inventory: &Inventory) -> Result<(), Diagnostics> {
        let mut c = Collector {
            file: &self.file,
            positions: &self.positions,
            found: Vec::new(),
        };
        for (name, environment) in &self.raw.environments {
            resolve_environment_servers(&mut c, inventory, name, &environment.servers);
        }
        for (task, steps) in &self.raw.tasks {
            for (i, step) in steps.iter().enumerate() {
                check_secrets(&mut c, inventory, &format!("tasks.{task}[{i}]"), step);
            }
        }
        c.finish(())
    }

    /// Stage 2: the plan for `context.task` in `context.environment`.
    pub fn plan(&self, context: &Context, inventory: &Inventory) -> Result<Plan, Diagnostics> {
        let mut c = Collector {
            file: &self.file,
            positions: &self.positions,
            found: Vec::new(),
        };
        // A preview: an undefined environment that matches `previews`, or a transient one.
        let previews = self.raw.previews.as_ref();
        let preview_of = previews.filter(|p| {
            !self.raw.environments.contains_key(&context.environment)
                && (context.transient
                    || p.environments
                        .as_deref()
                        .is_some_and(|g| crate::config::glob_match(g, &context.environment)))
        });
        // GitHub's `transient_environment` never turns an environment the manifest defines
        // into a preview: that would give it preview hosts and a teardown.
        let preview = preview_of.is_some();
        let defined_as = preview_of.map_or(context.environment.as_str(), |p| p.like.as_str());
        let Some(environment) = self.raw.environments.get(defined_as) else {
            let known = self
                .raw
                .environments
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            c.at_key(
                "environments",
                format!(
                    "environment `{}` is not defined (defined: {known})",
                    context.environment
                ),
            );
            return Err(c.finish(()).unwrap_err());
        };
        let servers =
            resolve_environment_servers(&mut c, inventory, defined_as, &environment.servers);
        // `task: stop` of a preview (unless the manifest defines stop) tears it down.
        if preview && context.task == "stop" && !self.raw.tasks.contains_key("stop") {
            let plan = Plan {
                task: context.task.clone(),
                environment: context.environment.clone(),
                environment_url: None,
                servers,
                strategy: Strategy::Parallel,
                steps: Vec::new(),
                teardown: true,
                preview,
                timeout: environment.timeout,
            };
            return c.finish(plan);
        }
        let steps = match self.steps_for(context, environment) {
            Ok(steps) => steps,
            Err((path, message)) => {
                c.at_key(&path, message);
                return Err(c.finish(()).unwrap_err());
            }
        };
        let mut planned = Vec::new();
        let mut preview_url = None;
        for (path, step, mut action) in steps {
            if preview {
                check_secrets_only(&mut c, inventory, &path, step);
            } else {
                check_secrets(&mut c, inventory, &path, step);
            }
            if let (true, Action::Container(plan)) = (preview, &mut action) {
                route_preview(&mut c, inventory, context, plan, &mut preview_url);
            }
            let step_servers = step_servers(&mut c, inventory, context, &servers, &path, step);
            check_builder(&mut c, inventory, &servers, &path, &action);
            planned.push(planned_step(
                &mut c,
                context,
                &path,
                step,
                action,
                step_servers,
            ));
        }
        let strategy = strategy(environment);
        let plan = Plan {
            task: context.task.clone(),
            environment: context.environment.clone(),
            environment_url: match preview_url {
                Some(url) => Some(url),
                None => environment
                    .url
                    .as_ref()
                    .map(|u| substitute(u, context, Quoting::Url)),
            },
            servers,
            strategy,
            steps: planned,
            teardown: false,
            preview,
            timeout: environment.timeout,
        };
        c.finish(plan)
    }
}

/// Each `auto_deploy` rule names a defined environment and task, and a branch.
fn check_auto_deploy(c: &mut Collector<'_>, raw: &RawManifest) {
    for (index, rule) in raw.auto_deploy.iter().enumerate() {
        let path = format!("auto_deploy.{index}");
        if !raw.environments.contains_key(&rule.environment) {
            c.at_value(
                &format!("{path}.environment"),
                format!(
                    "auto_deploy names environment `{}`, which is not defined",
                    rule.environment
                ),
            );
        }
        let task = rule.task.as_deref().unwrap_or("deploy");
        if !raw.tasks.contains_key(task) && !BUILT_IN_TASKS.contains(&task) {
            c.at_value(
                &format!("{path}.task"),
                format!("auto_deploy runs task `{task}`, which is not defined"),
            );
        }
        if rule.branch.trim().is_empty() {
            c.at_value(&format!("{path}.branch"), "the branch must not be empty");
        }
    }
}

/// An environment lists servers, has a URL that is one, durations in range, and `batch` and
/// `pause` only when rolling.
fn check_environment(
    c: &mut Collector<'_>,
    text: &str,
    name: &str,
    environment: &raw::RawEnvironment,
) {
    let path = format!("environments.{name}");
    if environment.servers.is_empty() {
        c.at_key(
            &format!("{path}.servers"),
            format!("environment `{name}` lists no servers"),
        );
    }
    if let Some(url) = &environment.url {
        check_expressions(c, text, &format!("{path}.url"), url);
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            c.at_value(
                &format!("{path}.url"),
                format!("url `{url}` must start with https:// or http:// (expressions may fill in the rest)"),
            );
        }
    }
    check_duration(c, &format!("{path}.pause"), environment.pause);
    check_duration(c, &format!("{path}.timeout"), environment.timeout);
    if environment.timeout == Some(Duration::ZERO) {
        c.at_value(
            &format!("{path}.timeout"),
            "a timeout must be longer than zero",
        );
    }
    match (environment.strategy, &environment.batch) {
        (RawStrategy::Parallel, Some(_)) => c.at_key(
            &format!("{path}.batch"),
            "`batch` needs `strategy: rolling`",
        ),
        (RawStrategy::Parallel, None) if environment.pause.is_some() => c.at_key(
            &format!("{path}.pause"),
            "`pause` needs `strategy: rolling`",
        ),
        (_, Some(batch)) => {
            if let Err(message) = parse_batch(batch) {
                c.at_value(&format!("{path}.batch"), message);
            }
        }
        _ => {}
    }
}

/// A task has steps, each valid, no two with one name.
fn check_task(c: &mut Collector<'_>, text: &str, task: &str, steps: &[RawStep]) {
    if steps.is_empty() {
        c.at_key(
            &format!("tasks.{task}"),
            format!("task `{task}` has no steps"),
        );
    }
    let mut names = BTreeSet::new();
    for (i, step) in steps.iter().enumerate() {
        let path = format!("tasks.{task}[{i}]");
        check_step(c, text, &path, step);
        if !names.insert(step.name.as_str()) {
            c.at_value(
                &format!("{path}.name"),
                format!("step name `{}` is used twice in task `{task}`", step.name),
            );
        }
    }
}

/// Gives a preview's proxied app its preview host (the first one is the environment's URL),
/// or says the operator config has no `preview_domain` for it.
fn route_preview(
    c: &mut Collector<'_>,
    inventory: &Inventory,
    context: &Context,
    plan: &mut ContainerPlan,
    preview_url: &mut Option<String>,
) {
    let Some(proxy) = &mut plan.proxy else {
        return;
    };
    match &inventory.preview_domain {
        Some(domain) => {
            let host = preview_host(
                &plan.app,
                &context.environment,
                &repo_digest(&context.repo_owner, &context.repo_name),
                domain,
            );
            preview_url.get_or_insert_with(|| format!("{}://{host}", inventory.preview_scheme));
            proxy.hosts = vec![host];
        }
        None => c.at_key(
            "previews",
            "a preview routes its apps through the proxy: the operator config needs [proxy] preview_domain",
        ),
    }
}

/// The servers of the environment (`servers`) that a step's `on` picks: all, the first, one
/// by name, or those with a role; none is an error at `on`.
fn step_servers(
    c: &mut Collector<'_>,
    inventory: &Inventory,
    context: &Context,
    servers: &[String],
    path: &str,
    step: &RawStep,
) -> Vec<String> {
    let on = step.on.as_deref().unwrap_or("all");
    let picked: Vec<String> = match on {
        "all" => servers.to_vec(),
        "first" => servers.iter().take(1).cloned().collect(),
        name if servers.iter().any(|s| s == name) => vec![name.to_string()],
        role => servers
            .iter()
            .filter(|s| {
                inventory
                    .servers
                    .iter()
                    .any(|i| &i.name == *s && i.roles.iter().any(|r| r == role))
            })
            .cloned()
            .collect(),
    };
    if picked.is_empty() && !servers.is_empty() {
        c.at_value(
            &format!("{path}.on"),
            format!(
                "step `{}`: `on: {on}` matches no server of environment `{}` (use all, first, one of its servers or a role one of them has)",
                step.name, context.environment
            ),
        );
    }
    picked
}

/// A container step's `build.builder` must be one of the environment's servers or one the
/// repository may use.
fn check_builder(
    c: &mut Collector<'_>,
    inventory: &Inventory,
    servers: &[String],
    path: &str,
    action: &Action,
) {
    let Action::Container(plan) = action else {
        return;
    };
    let ImageSource::Build(BuildPlan {
        builder: Some(builder),
        ..
    }) = &plan.image
    else {
        return;
    };
    if !servers.contains(builder)
        && !inventory
            .servers
            .iter()
            .any(|s| &s.name == builder && s.allowed)
    {
        c.at_value(
            &format!("{path}.container.build.builder"),
            format!("builder `{builder}` is not a server this repository may use"),
        );
    }
}

/// One step as it runs: its name, its script (expressions become variable references whose
/// values travel in the step's environment, src/manifest/shell.rs) and its environment.
fn planned_step(
    c: &mut Collector<'_>,
    context: &Context,
    path: &str,
    step: &RawStep,
    action: Action,
    servers: Vec<String>,
) -> PlannedStep {
    let (script, variables) = match action {
        Action::Shell => match shell::rewrite(step.run.as_deref().unwrap_or_default()) {
            Ok(script) => (script.text, script.variables),
            Err(error) => {
                c.at_value(&format!("{path}.run"), error.message);
                (String::new(), Vec::new())
            }
        },
        _ => (String::new(), Vec::new()),
    };
    let name = match &action {
        Action::Rollback { app, .. } => format!("rollback {app}"),
        Action::StopApp { app, .. } => format!("stop {app}"),
        Action::ComposeDown(plan) => format!("compose down {}", plan.project),
        _ => step.name.clone(),
    };
    PlannedStep {
        name,
        action,
        script,
        servers,
        timeout: step.timeout.unwrap_or(DEFAULT_STEP_TIMEOUT),
        env: step
            .env
            .iter()
            .map(|(k, v)| (k.clone(), substitute(v, context, Quoting::Raw)))
            .chain(
                variables
                    .iter()
                    .map(|(name, reference)| (name.clone(), context.value(reference))),
            )
            .collect(),
        secrets: step.secrets.clone(),
        working_dir: step.working_dir.clone(),
        continue_on_error: step.continue_on_error,
    }
}

/// How an environment's servers take each step: all at once, or in rolling batches.
fn strategy(environment: &raw::RawEnvironment) -> Strategy {
    match environment.strategy {
        RawStrategy::Parallel => Strategy::Parallel,
        RawStrategy::Rolling => Strategy::Rolling {
            batch: environment
                .batch
                .as_ref()
                .map(|b| parse_batch(b).unwrap_or(Batch::Count(1)))
                .unwrap_or(Batch::Count(1)),
            pause: environment.pause,
        },
    }
}

/// The steps of one task, with the path of each in the manifest and what it does.
type TaskSteps<'a> = Vec<(String, &'a RawStep, Action)>;

impl Manifest {
    /// The steps to run for `context.task`: the manifest's own, the built-in `rollback` and
    /// `stop` derived from `deploy`, or one container step for a payload's image. `Err` holds
    /// the path and message of why there are none.
    fn steps_for<'a>(
        &'a self,
        context: &Context,
        environment: &raw::RawEnvironment,
    ) -> Result<TaskSteps<'a>, (String, String)> {
        if let Some(steps) = payload_image_steps(context, environment)? {
            return Ok(steps);
        }
        if let Some(steps) = self.raw.tasks.get(&context.task) {
            return Ok(task_actions(context, &context.task, steps));
        }
        let defined = || {
            self.raw
                .tasks
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !BUILT_IN_TASKS.contains(&context.task.as_str()) {
            return Err((
                "tasks".into(),
                format!(
                    "task `{}` is not defined (defined: {})",
                    context.task,
                    defined()
                ),
            ));
        }
        let deploy = self
            .raw
            .tasks
            .get("deploy")
            .map(Vec::as_slice)
            .unwrap_or_default();
        let derived = derived_task(context, task_actions(context, "deploy", deploy));
        if derived.is_empty() {
            return Err((
                "tasks".into(),
                format!(
                    "task `{}` is not defined (defined: {}), and the deploy task has no container{} steps to derive it from",
                    context.task,
                    defined(),
                    if context.task == "stop" {
                        " or compose"
                    } else {
                        ""
                    }
                ),
            ));
        }
        Ok(derived)
    }
}

/// The one step of a `deploy` whose payload carries an image (`None` without one), or why
/// the environment refuses it (the path, the message).
fn payload_image_steps(
    context: &Context,
    environment: &raw::RawEnvironment,
) -> Result<Option<TaskSteps<'static>>, (String, String)> {
    let env_path = format!("environments.{}", context.environment);
    let plan = match containers::plan_payload_image(context) {
        Err(message) => return Err((env_path, format!("deployment payload: {message}"))),
        Ok(Some(plan)) if context.task == "deploy" => plan,
        Ok(_) => return Ok(None),
    };
    if !environment.allow_payload_image {
        return Err((
            env_path,
            format!(
                "the deployment's payload carries an image, but environment `{}` does not set allow_payload_image: true",
                context.environment
            ),
        ));
    }
    static PAYLOAD_STEP: std::sync::OnceLock<RawStep> = std::sync::OnceLock::new();
    let step = PAYLOAD_STEP.get_or_init(|| RawStep {
        name: "payload image".into(),
        run: None,
        container: None,
        compose: None,
        on: None,
        timeout: None,
        env: BTreeMap::new(),
        secrets: Vec::new(),
        working_dir: None,
        continue_on_error: false,
    });
    Ok(Some(vec![(
        env_path,
        step,
        Action::Container(Box::new(plan)),
    )]))
}

/// What each step of `task` does: a container, a compose stack or a script.
fn task_actions<'a>(context: &Context, task: &str, steps: &'a [RawStep]) -> TaskSteps<'a> {
    steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let action = match (&step.container, &step.compose) {
                (Some(container), _) => {
                    Action::Container(Box::new(containers::plan_container(container, context)))
                }
                (None, Some(compose)) => {
                    Action::Compose(containers::plan_compose(compose, context))
                }
                (None, None) => Action::Shell,
            };
            (format!("tasks.{task}[{i}]"), step, action)
        })
        .collect()
}

/// The built-in `rollback` or `stop` task, derived from the deploy task's container (and, for
/// `stop`, compose) steps.
fn derived_task<'a>(context: &Context, deploy: TaskSteps<'a>) -> TaskSteps<'a> {
    deploy
        .into_iter()
        .filter_map(|(path, step, action)| {
            let action = match (context.task.as_str(), action) {
                ("rollback", Action::Container(plan)) => Action::Rollback {
                    app: plan.app,
                    stop_timeout: plan.stop_timeout,
                },
                ("stop", Action::Container(plan)) => Action::StopApp {
                    app: plan.app,
                    stop_timeout: plan.stop_timeout,
                },
                ("stop", Action::Compose(plan)) => Action::ComposeDown(plan),
                _ => return None,
            };
            Some((path, step, action))
        })
        .collect()
}

fn check_step(c: &mut Collector<'_>, text: &str, path: &str, step: &RawStep) {
    check_duration(c, &format!("{path}.timeout"), step.timeout);
    let kinds = [
        step.run.is_some(),
        step.container.is_some(),
        step.compose.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        c.at_key(
            path,
            format!(
                "step `{}` has more than one of `run`, `container` and `compose`; give one",
                step.name
            ),
        );
    }
    if let Some(container) = &step.container {
        containers::check_container(c, &format!("{path}.container"), container);
        check_container_env(c, text, &format!("{path}.container"), container);
        for (key, set) in [
            ("env", !step.env.is_empty()),
            ("secrets", !step.secrets.is_empty()),
            ("working_dir", step.working_dir.is_some()),
        ] {
            if set {
                c.at_key(
                    &format!("{path}.{key}"),
                    format!("`{key}` belongs inside `container:` for a container step"),
                );
            }
        }
        return;
    }
    if let Some(compose) = &step.compose {
        containers::check_compose(c, &format!("{path}.compose"), compose);
        for (key, value) in &compose.env {
            check_expressions(c, text, &format!("{path}.compose.env.{key}"), value);
        }
        return;
    }
    match &step.run {
        None => c.at_key(
            path,
            format!(
                "step `{}` needs `run` (a shell script), `container` or `compose`",
                step.name
            ),
        ),
        Some(run) if run.trim().is_empty() => c.at_value(
            &format!("{path}.run"),
            format!("step `{}` has an empty `run`", step.name),
        ),
        Some(run) => {
            check_expressions(c, text, &format!("{path}.run"), run);
            check_script(c, text, &format!("{path}.run"), run);
        }
    }
    if step.name.trim().is_empty() {
        c.at_value(&format!("{path}.name"), "a step name cannot be empty");
    }
    if step.timeout == Some(Duration::ZERO) {
        c.at_value(
            &format!("{path}.timeout"),
            "a timeout must be longer than zero",
        );
    }
    for (key, value) in &step.env {
        let env_path = format!("{path}.env.{key}");
        check_env_name(c, &env_path, key);
        check_expressions(c, text, &env_path, value);
    }
    for (i, secret) in step.secrets.iter().enumerate() {
        if !valid_env_name(secret) {
            c.at_value(
                &format!("{path}.secrets[{i}]"),
                format!("`{secret}` is not a valid environment variable name"),
            );
        }
    }
    if let Some(dir) = &step.working_dir {
        if dir.trim().is_empty() {
            c.at_value(
                &format!("{path}.working_dir"),
                "working_dir cannot be empty",
            );
        }
    }
}

fn check_container_env(c: &mut Collector<'_>, text: &str, path: &str, raw: &raw::RawContainer) {
    if let Some(command) = &raw.command {
        // `command: "..."` is one script for `sh -c`; a list is one argument each.
        let args = containers::command(command);
        let shell_form = matches!(command, raw::RawCommand::Shell(_));
        let script = containers::script_argument(&args);
        for (i, arg) in args.iter().enumerate().skip(if shell_form { 2 } else { 0 }) {
            let arg_path = if shell_form {
                format!("{path}.command")
            } else {
                format!("{path}.command[{i}]")
            };
            check_expressions(c, text, &arg_path, arg);
            if Some(i) == script {
                check_script(c, text, &arg_path, arg);
            } else if let Some(first) = occurrences(arg).first() {
                let needle = &arg[first.start..first.end.min(arg.len())];
                let start = c.positions.value(&arg_path);
                let position = start
                    .and_then(|s| find_in_source(text, s, needle))
                    .or(start);
                c.push(
                    position,
                    format!(
                        "`{needle}` may stand in a command list only in the script a shell runs (`[sh, -c, SCRIPT]`), where it becomes a variable: elsewhere the program may run it as code; pass the value through `env:` and read the variable"
                    ),
                );
            }
        }
    }
    for (key, value) in &raw.env {
        check_expressions(c, text, &format!("{path}.env.{key}"), value);
    }
    for (key, value) in &raw.labels {
        check_expressions(c, text, &format!("{path}.labels.{key}"), value);
    }
    if let Some(image) = &raw.image {
        check_expressions(c, text, &format!("{path}.image"), image);
    }
    if let Some(tag) = &raw.tag {
        check_expressions(c, text, &format!("{path}.tag"), tag);
    }
    if let Some(build) = &raw.build {
        for (key, value) in &build.args {
            check_expressions(c, text, &format!("{path}.build.args.{key}"), value);
        }
    }
}

/// Reports an expression that cannot stand where it stands in a shell script (in a quoted
/// heredoc, which expands nothing).
fn check_script(c: &mut Collector<'_>, text: &str, path: &str, script: &str) {
    if let Err(error) = shell::rewrite(script) {
        let start = c.positions.value(path);
        let needle = occurrences(&script[error.offset..])
            .first()
            .map(|o| script[error.offset + o.start..error.offset + o.end].to_string())
            .unwrap_or_default();
        let position = start
            .and_then(|s| find_in_source(text, s, &needle))
            .or(start);
        c.push(position, error.message);
    }
}

/// Reports every malformed or unknown expression in the value at `path`, pointing at the
/// expression itself when it can be found in the source text.
fn check_expressions(c: &mut Collector<'_>, text: &str, path: &str, value: &str) {
    for occurrence in occurrences(value) {
        let error = if occurrence.end == value.len() && !value.ends_with("}}") {
            Some(format!(
                "`${{{{` without a closing `}}}}` in `{}`",
                &value[occurrence.start..]
            ))
        } else {
            parse_reference(&occurrence.inner).err()
        };
        if let Some(message) = error {
            let start = c.positions.value(path);
            let needle = &value[occurrence.start..occurrence.end.min(value.len())];
            let position = start
                .and_then(|s| find_in_source(text, s, needle))
                .or(start);
            c.push(position, message);
        }
    }
}

/// The position of `needle` in `text` at or after `from`.
fn find_in_source(text: &str, from: Position, needle: &str) -> Option<Position> {
    for (index, line) in text.lines().enumerate().skip(from.line - 1) {
        let skip = if index + 1 == from.line {
            from.column - 1
        } else {
            0
        };
        let searchable = line.get(skip..).unwrap_or_default();
        if let Some(byte) = searchable.find(needle) {
            let column = line[..skip + byte].chars().count() + 1;
            return Some(Position {
                line: index + 1,
                column,
            });
        }
    }
    None
}

fn parse_batch(batch: &RawBatch) -> Result<Batch, String> {
    match batch {
        RawBatch::Count(0) => Err("batch must be at least 1".into()),
        RawBatch::Count(n) => Ok(Batch::Count(*n)),
        RawBatch::Percent(text) => {
            let number = text
                .trim()
                .strip_suffix('%')
                .and_then(|n| n.trim().parse::<u32>().ok());
            match number {
                Some(p) if (1..=100).contains(&p) => Ok(Batch::Percent(p)),
                _ => Err(format!(
                    "batch `{text}` must be a count (2) or a percentage from 1% to 100% (\"25%\")"
                )),
            }
        }
    }
}

/// Resolves an environment's `servers` entries (names, then roles) to server names the repo
/// may use, in order, reporting unknown and forbidden ones.
fn resolve_environment_servers(
    c: &mut Collector<'_>,
    inventory: &Inventory,
    environment: &str,
    entries: &[String],
) -> Vec<String> {
    let mut resolved: Vec<String> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let path = format!("environments.{environment}.servers[{i}]");
        let matched: Vec<&InventoryServer> =
            match inventory.servers.iter().find(|s| &s.name == entry) {
                Some(server) => vec![server],
                None => inventory
                    .servers
                    .iter()
                    .filter(|s| s.roles.iter().any(|r| r == entry))
                    .collect(),
            };
        if matched.is_empty() {
            c.at_value(
                &path,
                format!(
                    "unknown server or role `{entry}`: the operator config defines no such server"
                ),
            );
            continue;
        }
        for server in matched {
            if !server.allowed {
                c.at_value(
                    &path,
                    format!(
                        "server `{}` is not allowed for {} by the operator config",
                        server.name, inventory.repo
                    ),
                );
            } else if !resolved.contains(&server.name) {
                resolved.push(server.name.clone());
            }
        }
    }
    resolved
}

/// Every proxy host of a container step must be one the operator lets this repository claim.
fn check_hosts(c: &mut Collector<'_>, inventory: &Inventory, path: &str, step: &RawStep) {
    let Some(proxy) = step.container.as_ref().and_then(|c| c.proxy.as_ref()) else {
        return;
    };
    for (i, host) in proxy.hosts.iter().enumerate() {
        if !inventory.allows_host(host) {
            let allowed = if inventory.hosts.is_empty() {
                "it allows none".to_string()
            } else {
                format!("allowed: {}", inventory.hosts.join(", "))
            };
            c.at_value(
                &format!("{path}.container.proxy.hosts[{i}]"),
                format!(
                    "host `{host}` is not allowed for {} by the operator config ({allowed})",
                    inventory.repo
                ),
            );
        }
    }
}

/// A preview's host for `app` of the repository with `digest`: `APP-ENVIRONMENT-DIGEST.domain`,
/// as one DNS label plus the domain. The digest keeps one repository's previews from taking
/// (or squatting) another's hosts.
pub fn preview_host(app: &str, environment: &str, digest: &str, domain: &str) -> String {
    let label: String = format!("{app}-{environment}")
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    // A DNS label holds 63 characters: the digest always fits.
    let room = 63 - digest.len() - 1;
    let label = label.trim_matches('-');
    let label = label[..label.len().min(room)].trim_end_matches('-');
    format!("{label}-{digest}.{}", domain.trim_matches('.'))
}

fn check_secrets(c: &mut Collector<'_>, inventory: &Inventory, path: &str, step: &RawStep) {
    check_hosts(c, inventory, path, step);
    check_secrets_only(c, inventory, path, step);
}

/// A container step may do only what the operator's container policy allows this repository.
fn check_container_policy(
    c: &mut Collector<'_>,
    inventory: &Inventory,
    path: &str,
    step: &RawStep,
) {
    let (Some(policy), Some(container)) = (&inventory.containers, &step.container) else {
        return;
    };
    let path = format!("{path}.container");
    for (i, volume) in container.volumes.iter().enumerate() {
        let source = volume.split(':').next().unwrap_or_default();
        if source.starts_with('/') {
            if let Some(why) = policy.refuses_mount(source) {
                c.at_value(&format!("{path}.volumes[{i}]"), why);
            }
        }
    }
    if container.network.as_deref() == Some("host") && !policy.host_network {
        c.at_value(
            &format!("{path}.network"),
            "`network: host` shares the server's network and bypasses the proxy; the operator config does not allow it (repos.containers.host_network)",
        );
    }
    if !policy.public_ports {
        for (i, port) in container.ports.iter().enumerate() {
            if let Ok(mapping) = containers::parse_port(port) {
                if let Some(ip) = mapping.host_ip.as_deref().filter(|ip| !is_loopback(ip)) {
                    c.at_value(
                        &format!("{path}.ports[{i}]"),
                        format!("`{port}` publishes on {ip}, beside the proxy; ports are published on the server's private address unless the operator config allows public ports (repos.containers.public_ports)"),
                    );
                }
            }
        }
    }
}

fn is_loopback(ip: &str) -> bool {
    ip.trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

fn check_secrets_only(c: &mut Collector<'_>, inventory: &Inventory, path: &str, step: &RawStep) {
    check_container_policy(c, inventory, path, step);
    let (path, secrets) = match &step.container {
        Some(container) => (format!("{path}.container"), &container.secrets),
        None => (path.to_string(), &step.secrets),
    };
    for (i, secret) in secrets.iter().enumerate() {
        if valid_env_name(secret) && !inventory.secrets.contains(secret) {
            c.at_value(
                &format!("{path}.secrets[{i}]"),
                format!(
                    "secret `{secret}` is not provided for {} by the operator config",
                    inventory.repo
                ),
            );
        }
    }
}

fn yaml_diagnostic(file: &str, error: &serde_yaml::Error) -> Diagnostic {
    let text = error.to_string();
    // serde_yaml appends " at line L column C" when it knows the location; it is in `position`.
    let message = match text.rfind(" at line ") {
        Some(i) if error.location().is_some() => text[..i].to_string(),
        _ => text,
    };
    let position = error.location().map(|l| Position {
        line: l.line(),
        column: l.column(),
    });
    Diagnostic {
        file: file.to_string(),
        position,
        message,
    }
}

#[cfg(test)]
mod tests;
