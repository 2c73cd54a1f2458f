//! Durable records: deployments, step runs, log lines, webhook deliveries and the outbox of
//! GitHub statuses.
//!
//! The engine and the HTTP layer see the [`Store`] trait and the record types here; only
//! [`Sqlite`] knows SQL. A state change and the status it owes GitHub are written in one
//! transaction, so neither can be lost without the other.

#[cfg(test)]
mod contract;
mod sqlite;

use std::fmt;

use async_trait::async_trait;
use serde::Serialize;

pub use sqlite::Sqlite;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// A fresh, unguessable random token (192 bits): session ids, API tokens. (A deployment page's
/// token is not random but derived: `Keys::log_token`.)
pub fn new_token() -> String {
    use rand::RngExt;
    let bytes: [u8; 24] = rand::rng().random();
    hex::encode(bytes)
}

/// Records after `after`, read a page at a time: `read(after)` returns the page after its
/// argument (oldest first, empty past the end) and `key` a record's position, which the next
/// page starts after. Reading stops at the first empty page or error; the whole sequence is
/// never in memory.
pub fn paged<T, F, Fut>(
    after: i64,
    read: F,
    key: fn(&T) -> i64,
) -> impl futures::Stream<Item = anyhow::Result<Vec<T>>>
where
    F: FnMut(i64) -> Fut,
    Fut: Future<Output = anyhow::Result<Vec<T>>>,
{
    futures::stream::try_unfold((after, read), move |(after, mut read)| async move {
        let page = read(after).await?;
        Ok(page.last().map(key).map(|last| (page, (last, read))))
    })
}

pub fn now_ms() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Queued,
    Running,
    Success,
    Failure,
    Error,
    /// A successful deployment no longer live: a later one replaced it, or its environment was
    /// torn down.
    Inactive,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Success => "success",
            State::Failure => "failure",
            State::Error => "error",
            State::Inactive => "inactive",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        Some(match text {
            "queued" => State::Queued,
            "running" => State::Running,
            "success" => State::Success,
            "failure" => State::Failure,
            "error" => State::Error,
            "inactive" => State::Inactive,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Success | State::Failure | State::Error | State::Inactive
        )
    }

    /// The GitHub deployment status state this corresponds to.
    pub fn github_state(self) -> StatusState {
        match self {
            State::Queued => StatusState::Queued,
            State::Running => StatusState::InProgress,
            State::Success => StatusState::Success,
            State::Failure => StatusState::Failure,
            State::Error => StatusState::Error,
            State::Inactive => StatusState::Inactive,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A deployment to record.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub github_id: Option<i64>,
    pub repo: String,
    pub environment: String,
    pub task: String,
    pub git_ref: String,
    pub sha: crate::sha::Sha,
    pub payload: serde_json::Value,
    pub description: Option<String>,
    pub creator: Option<String>,
    pub installation_id: Option<i64>,
    pub transient: bool,
    pub production: bool,
}

/// Builds the `queued` status of a deployment once its id is known, so that the status is
/// written in the same transaction as the deployment.
pub type StatusFn = Box<dyn FnOnce(&Deployment) -> StatusDraft + Send>;

#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    pub id: i64,
    pub github_id: Option<i64>,
    pub repo: String,
    pub environment: String,
    pub task: String,
    pub git_ref: String,
    pub sha: crate::sha::Sha,
    pub payload: serde_json::Value,
    pub description: Option<String>,
    pub creator: Option<String>,
    pub installation_id: Option<i64>,
    pub transient: bool,
    pub production: bool,
    /// GitHub's check run for this deployment, once created (GitHub App auth only).
    pub check_run_id: Option<i64>,
    pub state: State,
    pub state_description: Option<String>,
    pub environment_url: Option<String>,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
}

impl Deployment {
    pub fn repo_parts(&self) -> (&str, &str) {
        self.repo.split_once('/').unwrap_or(("", &self.repo))
    }

    /// The deployment id that expressions and `DROPSHIP_DEPLOYMENT_ID` show: GitHub's when
    /// there is one.
    pub fn public_id(&self) -> i64 {
        self.github_id.unwrap_or(self.id)
    }
}

/// The outcome of recording a deployment from a webhook.
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    New(Deployment),
    /// The same GitHub deployment id was recorded before: a redelivery.
    Duplicate(Deployment),
}

/// A webhook delivery and what became of it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub delivery_id: Option<String>,
    pub event: String,
    pub action: Option<String>,
    pub result: DeliveryResult,
    pub deployment_id: Option<i64>,
}

/// What became of a webhook delivery, as the `deliveries` table records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryResult {
    /// A `ping`.
    Ping,
    /// An event Dropship does not act on, or a repository it does not serve.
    Ignored,
    /// Refused by the operator config.
    Refused,
    /// Acted on (a deployment recorded, a preview torn down, an auto-deploy considered).
    Accepted,
    /// A deployment already recorded.
    Duplicate,
}

impl DeliveryResult {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryResult::Ping => "ping",
            DeliveryResult::Ignored => "ignored",
            DeliveryResult::Refused => "refused",
            DeliveryResult::Accepted => "accepted",
            DeliveryResult::Duplicate => "duplicate",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Running,
    Success,
    Failure,
    TimedOut,
    Skipped,
    Error,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Success => "success",
            StepState::Failure => "failure",
            StepState::TimedOut => "timed_out",
            StepState::Skipped => "skipped",
            StepState::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<StepState> {
        Some(match text {
            "pending" => StepState::Pending,
            "running" => StepState::Running,
            "success" => StepState::Success,
            "failure" => StepState::Failure,
            "timed_out" => StepState::TimedOut,
            "skipped" => StepState::Skipped,
            "error" => StepState::Error,
            _ => return None,
        })
    }
}

/// One step on one server.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRun {
    pub deployment_id: i64,
    pub step_index: i64,
    pub step: String,
    pub server: String,
    pub state: StepState,
    pub exit_code: Option<i64>,
    pub message: Option<String>,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
}

/// The axes of a steps × servers grid: servers and steps (index, name), each in order of first
/// appearance.
pub fn grid_axes(steps: &[StepRun]) -> (Vec<&str>, Vec<(i64, &str)>) {
    let mut servers: Vec<&str> = Vec::new();
    let mut rows: Vec<(i64, &str)> = Vec::new();
    for step in steps {
        if !servers.contains(&step.server.as_str()) {
            servers.push(&step.server);
        }
        if !rows.iter().any(|(index, _)| *index == step.step_index) {
            rows.push((step.step_index, &step.step));
        }
    }
    (servers, rows)
}

/// Which stream a log line came from: the command's or container's output, or Dropship's own
/// note.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
    Dropship,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::Dropship => "dropship",
        }
    }

    pub fn parse(text: &str) -> Option<LogStream> {
        Some(match text {
            "stdout" => LogStream::Stdout,
            "stderr" => LogStream::Stderr,
            "dropship" => LogStream::Dropship,
            _ => return None,
        })
    }
}

impl PartialEq<&str> for LogStream {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for LogStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogLine {
    pub deployment_id: i64,
    pub seq: i64,
    pub at: Millis,
    pub server: Option<String>,
    pub step: Option<String>,
    /// `stdout`, `stderr`, or `dropship` for its own messages.
    pub stream: LogStream,
    pub line: String,
}

/// A status GitHub is owed.
/// A GitHub deployment status's state, as Dropship posts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusState {
    Queued,
    InProgress,
    Success,
    Failure,
    Error,
    Inactive,
}

impl StatusState {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusState::Queued => "queued",
            StatusState::InProgress => "in_progress",
            StatusState::Success => "success",
            StatusState::Failure => "failure",
            StatusState::Error => "error",
            StatusState::Inactive => "inactive",
        }
    }
}

/// A GitHub check run's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Queued,
    InProgress,
    Completed,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Queued => "queued",
            CheckStatus::InProgress => "in_progress",
            CheckStatus::Completed => "completed",
        }
    }
}

/// A completed GitHub check run's conclusion, as Dropship gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckConclusion {
    Success,
    Failure,
    Neutral,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StatusDraft {
    pub state: StatusState,
    pub description: String,
    pub log_url: Option<String>,
    pub environment_url: Option<String>,
}

/// What an outbox item posts to GitHub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// A deployment status.
    Status,
    /// A check-run update, with its `body`.
    Check,
}

impl OutboxKind {
    /// As the `status_outbox` table, the API and the metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxKind::Status => "status",
            OutboxKind::Check => "check",
        }
    }
}

/// A status in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxItem {
    pub id: i64,
    pub deployment_id: i64,
    pub kind: OutboxKind,
    pub body: Option<serde_json::Value>,
    pub state: String,
    pub description: String,
    pub log_url: Option<String>,
    pub environment_url: Option<String>,
    pub attempts: i64,
    pub next_attempt_at: Millis,
    pub delivered_at: Option<Millis>,
    pub failed_at: Option<Millis>,
    pub last_error: Option<String>,
    /// When a post of it began whose outcome was never recorded (Dropship stopped mid-post).
    pub sending_since: Option<Millis>,
}

/// A state change, with the status to post (if the deployment came from GitHub).
#[derive(Debug, Clone)]
pub struct Transition {
    pub state: State,
    pub description: Option<String>,
    pub environment_url: Option<String>,
    pub status: Option<StatusDraft>,
    /// The check-run update to send after the status (GitHub App auth only).
    pub check: Option<CheckDraft>,
}

/// A check-run update for the outbox: `status` is GitHub's (`queued`, `in_progress`,
/// `completed`); `body` is the request body without `name` and `head_sha`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckDraft {
    pub status: CheckStatus,
    pub title: String,
    pub body: serde_json::Value,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub at: Millis,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// A locked environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lock {
    pub repo: String,
    pub environment: String,
    pub locked_by: String,
    pub reason: String,
    pub locked_at: Millis,
    /// When the lock ends by itself; none: when it is unlocked.
    pub expires_at: Option<Millis>,
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub repo: Option<String>,
    pub environment: Option<String>,
    pub state: Option<State>,
    pub limit: i64,
}

/// A Compose service as a deployment left it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Service {
    pub deployment_id: i64,
    pub server: String,
    pub project: String,
    pub service: String,
    pub container: String,
    pub state: String,
    pub status: String,
}

/// A line written by a container Dropship runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppLogLine {
    /// Assigned by the store; 0 before.
    pub id: i64,
    pub repo: String,
    pub environment: String,
    pub app: String,
    pub server: String,
    pub container: String,
    /// Docker's timestamp, nanoseconds since the epoch.
    pub ts: i64,
    pub stream: LogStream,
    pub line: String,
}

/// Where following a container's log resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogCursor {
    /// The newest timestamp stored.
    pub ts: i64,
    /// How many stored lines carry exactly `ts`.
    pub at_ts: i64,
}

/// A proxy route as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRecord {
    pub repo: String,
    pub environment: String,
    pub app: String,
    pub hosts: Vec<String>,
    pub path_prefix: String,
    pub upstreams: Vec<UpstreamRecord>,
}

/// One upstream of a stored route: a container's published port on its server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpstreamRecord {
    /// `host:port`.
    pub address: String,
    pub container: String,
}

/// The whole store: every concern below, of one database. Implementations: [`Sqlite`]. A
/// second database implements each concern's trait and passes the contract suite
/// (`store::contract`); `Store` then follows.
pub trait Store:
    Deployments
    + DeploymentLogs
    + StatusOutbox
    + ContainerRecords
    + AppLogs
    + RouteStore
    + People
    + EnvironmentStore
    + AutoDeploys
    + fmt::Debug
{
}

impl<
    T: Deployments
        + DeploymentLogs
        + StatusOutbox
        + ContainerRecords
        + AppLogs
        + RouteStore
        + People
        + EnvironmentStore
        + AutoDeploys
        + fmt::Debug,
> Store for T
{
}

/// Deliveries, deployments and their step runs.
#[async_trait]
pub trait Deployments: Send + Sync {
    async fn record_delivery(&self, delivery: Delivery) -> anyhow::Result<()>;
    /// Records a deployment (with its `queued` status and its delivery) durably before it
    /// returns; a known `github_id` is a duplicate and changes nothing.
    async fn insert_deployment(
        &self,
        deployment: NewDeployment,
        queued_status: Option<StatusFn>,
        delivery: Option<Delivery>,
    ) -> anyhow::Result<Inserted>;
    async fn deployment(&self, id: i64) -> anyhow::Result<Option<Deployment>>;
    /// Whether GitHub deployment `github_id` was recorded.
    async fn has_github_deployment(&self, github_id: i64) -> anyhow::Result<bool>;
    /// The newest GitHub deployment id recorded for `repo`'s `environment`.
    async fn newest_github_id(&self, repo: &str, environment: &str) -> anyhow::Result<Option<i64>>;
    async fn list_deployments(&self, filter: &ListFilter) -> anyhow::Result<Vec<Deployment>>;
    /// The repositories and environments with queued deployments, `limit` at most, the one
    /// with the oldest queued deployment first.
    async fn queued_environments(&self, limit: i64) -> anyhow::Result<Vec<(String, String)>>;
    /// The ids of an environment's queued deployments, oldest first.
    async fn queued_in(&self, repo: &str, environment: &str) -> anyhow::Result<Vec<i64>>;
    async fn running(&self) -> anyhow::Result<Vec<Deployment>>;
    /// Changes a deployment's state and enqueues its status in one transaction. Moving to
    /// `running` succeeds only from `queued`, so no deployment runs twice, and only while no
    /// other deployment of its repository and environment is `running`: the store holds each
    /// environment's run lease, so nothing in memory (a restart, a second scheduler) can let
    /// two overlap. Returns whether the change was made.
    async fn transition(&self, id: i64, transition: Transition) -> anyhow::Result<bool>;
    async fn save_step(&self, step: &StepRun) -> anyhow::Result<()>;
    async fn steps(&self, deployment_id: i64) -> anyhow::Result<Vec<StepRun>>;
    /// Remembers job groups (server, group) that may still run with nobody waiting for them.
    async fn add_orphan_jobs(&self, jobs: &[(String, String)]) -> anyhow::Result<()>;
    /// The orphan job groups on `server`, or on every server (server, group).
    async fn orphan_jobs(&self, server: Option<&str>) -> anyhow::Result<Vec<(String, String)>>;
    /// Forgets an orphan job group once it was killed.
    async fn orphan_killed(&self, server: &str, group: &str) -> anyhow::Result<()>;
    /// The newest deployment of each (repo, environment), of `state` when given.
    async fn latest_per_environment(&self, state: Option<State>)
    -> anyhow::Result<Vec<Deployment>>;
}

/// The lines of each deployment's log.
#[async_trait]
pub trait DeploymentLogs: Send + Sync {
    async fn append_logs(&self, lines: &[LogLine]) -> anyhow::Result<()>;
    async fn logs(
        &self,
        deployment_id: i64,
        after_seq: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<LogLine>>;
    /// The last `limit` lines before `before_seq` (all lines: `i64::MAX`), oldest first: a page
    /// of the log read backwards.
    async fn logs_before(
        &self,
        deployment_id: i64,
        before_seq: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<LogLine>>;
    /// The last `limit` output lines (not Dropship's own notes) of `step` on `server`, oldest
    /// first.
    async fn step_output_tail(
        &self,
        deployment_id: i64,
        step: &str,
        server: &str,
        limit: i64,
    ) -> anyhow::Result<Vec<LogLine>>;
    async fn last_log_seq(&self, deployment_id: i64) -> anyhow::Result<i64>;
}

/// GitHub statuses and check-run updates waiting to be delivered, in order per deployment.
#[async_trait]
pub trait StatusOutbox: Send + Sync {
    /// Statuses due by `now` that are the first still pending of their deployment, soonest
    /// first, at most `limit`.
    async fn due_statuses(&self, now: Millis, limit: i64) -> anyhow::Result<Vec<OutboxItem>>;
    /// When the next pending status is due, if any is pending.
    async fn next_status_due(&self) -> anyhow::Result<Option<Millis>>;
    /// Notes that a post of item `id` begins, before it is sent: if Dropship stops before the
    /// outcome is recorded, the next attempt knows to ask GitHub first.
    async fn status_sending(&self, id: i64) -> anyhow::Result<()>;
    async fn status_delivered(&self, id: i64) -> anyhow::Result<()>;
    /// Item `id` is tried again at `next_attempt_at`. `answered`: GitHub answered the post
    /// (refused it), so it was not posted; without an answer it may have been, and the post
    /// stays noted as under way, so the next attempt asks GitHub first.
    async fn status_retry(
        &self,
        id: i64,
        next_attempt_at: Millis,
        error: &str,
        answered: bool,
    ) -> anyhow::Result<()>;
    async fn status_failed(&self, id: i64, error: &str) -> anyhow::Result<()>;
    async fn statuses(&self, deployment_id: i64) -> anyhow::Result<Vec<OutboxItem>>;
    /// Enqueues a status behind the deployment's pending ones (a resend: state changes write
    /// theirs with the change, through `Deployments::transition`).
    async fn enqueue_status(&self, deployment_id: i64, status: &StatusDraft) -> anyhow::Result<()>;
    /// Enqueues a check-run update behind the deployment's pending statuses.
    async fn enqueue_check(&self, deployment_id: i64, check: &CheckDraft) -> anyhow::Result<()>;
    async fn set_check_run(&self, deployment_id: i64, check_run_id: i64) -> anyhow::Result<()>;
}

/// Which containers each deployment started, and which servers' containers are followed.
#[async_trait]
pub trait ContainerRecords: Send + Sync {
    async fn save_services(&self, services: &[Service]) -> anyhow::Result<()>;
    async fn services(&self, deployment_id: i64) -> anyhow::Result<Vec<Service>>;
    /// Remembers that `server`'s containers are followed.
    async fn add_container_host(&self, server: &str) -> anyhow::Result<()>;
    async fn container_hosts(&self) -> anyhow::Result<Vec<String>>;
}

/// The containers' own log lines, with each container's cursor.
#[async_trait]
pub trait AppLogs: Send + Sync {
    /// Stores container log lines (assigning ids, in order) and moves each container's cursor,
    /// in one transaction; then drops each app's oldest lines beyond `retention_bytes`.
    async fn append_app_logs(
        &self,
        lines: Vec<AppLogLine>,
        retention_bytes: i64,
    ) -> anyhow::Result<Vec<AppLogLine>>;
    /// Lines of `repo`'s `environment` after `after_id`, oldest first, at most `limit`.
    async fn app_logs(
        &self,
        repo: &str,
        environment: &str,
        after_id: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<AppLogLine>>;
    /// The newest `limit` lines of `repo`'s `environment`, oldest first.
    async fn app_logs_tail(
        &self,
        repo: &str,
        environment: &str,
        limit: i64,
    ) -> anyhow::Result<Vec<AppLogLine>>;
    async fn log_cursor(&self, container: &str) -> anyhow::Result<Option<LogCursor>>;
}

/// The edge proxy's routes.
#[async_trait]
pub trait RouteStore: Send + Sync {
    /// Creates or replaces the route of (repo, environment, app).
    async fn save_route(&self, route: &RouteRecord) -> anyhow::Result<()>;
    async fn delete_route(&self, repo: &str, environment: &str, app: &str) -> anyhow::Result<()>;
    async fn routes(&self) -> anyhow::Result<Vec<RouteRecord>>;
}

/// Dashboard sessions and the audit log.
#[async_trait]
pub trait People: Send + Sync {
    async fn create_session(
        &self,
        id_sha256: &str,
        user: &str,
        expires_at: Millis,
    ) -> anyhow::Result<()>;
    /// The user of an unexpired session.
    async fn session_user(&self, id_sha256: &str, now: Millis) -> anyhow::Result<Option<String>>;
    async fn delete_session(&self, id_sha256: &str) -> anyhow::Result<()>;
    async fn audit(&self, entry: &AuditEntry) -> anyhow::Result<()>;
    /// The newest `limit` entries, newest first.
    async fn audit_log(&self, limit: i64) -> anyhow::Result<Vec<AuditEntry>>;
}

/// Environment locks and preview environments.
#[async_trait]
pub trait EnvironmentStore: Send + Sync {
    /// Remembers (with `Some(git_ref)`) or forgets a preview environment.
    async fn set_preview(
        &self,
        repo: &str,
        environment: &str,
        git_ref: Option<&str>,
    ) -> anyhow::Result<()>;
    /// The preview environments of `repo` deployed from `git_ref`.
    async fn previews_of_ref(&self, repo: &str, git_ref: &str) -> anyhow::Result<Vec<String>>;
    /// The locks in force at `now` (an expired lock is no lock).
    async fn locks(&self, now: Millis) -> anyhow::Result<Vec<Lock>>;
    /// Locks an environment, replacing a lock that expired by `lock.locked_at`; false (and
    /// nothing changes) when it is locked already.
    async fn lock(&self, lock: &Lock) -> anyhow::Result<bool>;
    /// Unlocks a lock in force at `now`; false when there was none.
    async fn unlock(&self, repo: &str, environment: &str, now: Millis) -> anyhow::Result<bool>;
}

/// Claims of the auto-deploys made, so none is made twice.
#[async_trait]
pub trait AutoDeploys: Send + Sync {
    /// Claims the auto-deploy of `sha` to `environment`: false when it was claimed before.
    async fn claim_auto_deploy(
        &self,
        repo: &str,
        environment: &str,
        sha: &str,
        trigger: &str,
    ) -> anyhow::Result<bool>;
    /// Gives a claim back (the deployment could not be created), so a later event may retry.
    async fn release_auto_deploy(
        &self,
        repo: &str,
        environment: &str,
        sha: &str,
    ) -> anyhow::Result<()>;
}
