//! [`Store`] on SQLite: WAL, `synchronous = FULL`, one writer connection and a pool of
//! read-only ones, migrations embedded.
//!
//! Every write goes through one writer task ([`writer`]), which group-commits what queued up
//! meanwhile, deliveries first; reads use a pool of read-only connections, which never wait for
//! the writer in WAL mode.

mod writer;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};
use writer::{StatusChange, Writer};

use super::{
    AppLogLine, AppLogs, AuditEntry, AutoDeploys, CheckDraft, ContainerRecords, Delivery,
    Deployment, DeploymentLogs, Deployments, EnvironmentStore, Inserted, ListFilter, Lock,
    LogCursor, LogLine, LogStream, Millis, NewDeployment, OutboxItem, OutboxKind, People,
    RouteRecord, RouteStore, Service, State, StatusFn, StatusOutbox, StepRun, StepState,
    Transition, now_ms,
};

pub struct Sqlite {
    /// Read-only connections.
    pool: SqlitePool,
    /// The task that owns the one connection that writes.
    writer: Writer,
}

impl std::fmt::Debug for Sqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sqlite").finish_non_exhaustive()
    }
}

impl Sqlite {
    /// Opens (creating if needed) the database at `path` and runs the migrations.
    pub async fn open(path: &Path) -> anyhow::Result<Sqlite> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating data directory {}", dir.display()))?;
        }
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        // One writer connection: SQLite has one writer at a time, and a second connection that
        // wants to write waits in SQLite's busy handler, which sleeps. Queued in the pool instead,
        // writers take turns without sleeping.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .with_context(|| format!("opening database {}", path.display()))?;
        sqlx::migrate!("./migrations")
            .run(&writer)
            .await
            .context("running database migrations")?;
        // Readers never wait for the writer in WAL mode. Few of them: each is a thread.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await
            .with_context(|| format!("opening database {}", path.display()))?;
        Ok(Sqlite {
            pool,
            writer: Writer::start(writer),
        })
    }
}

fn deployment_from_row(row: &SqliteRow) -> anyhow::Result<Deployment> {
    let id: i64 = row.try_get("id")?;
    let state: String = row.try_get("state")?;
    let payload: String = row.try_get("payload")?;
    Ok(Deployment {
        id,
        github_id: row.try_get("github_id")?,
        repo: row.try_get("repo")?,
        environment: row.try_get("environment")?,
        task: row.try_get("task")?,
        git_ref: row.try_get("git_ref")?,
        sha: row.try_get::<String, _>("sha")?.into(),
        payload: serde_json::from_str(&payload)
            .with_context(|| format!("deployment {id} has a payload that is not JSON"))?,
        description: row.try_get("description")?,
        creator: row.try_get("creator")?,
        installation_id: row.try_get("installation_id")?,
        transient: row.try_get("transient")?,
        production: row.try_get("production")?,
        check_run_id: row.try_get("check_run_id")?,
        state: State::parse(&state)
            .with_context(|| format!("deployment {id} has an unknown state `{state}`"))?,
        state_description: row.try_get("state_description")?,
        environment_url: row.try_get("environment_url")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// A row's `stream`; an unknown one is an error naming the row, never a default.
fn stream_from_row(row: &SqliteRow) -> anyhow::Result<LogStream> {
    let text: String = row.try_get("stream")?;
    LogStream::parse(&text).ok_or_else(|| {
        // A deployment's log line is (deployment_id, seq); a container's has an id.
        let at = match row.try_get::<i64, _>("id") {
            Ok(id) => format!("container log line {id}"),
            Err(_) => format!(
                "log line {} of deployment {}",
                row.try_get::<i64, _>("seq").unwrap_or_default(),
                row.try_get::<i64, _>("deployment_id").unwrap_or_default()
            ),
        };
        anyhow::anyhow!("{at} has an unknown stream {text:?}")
    })
}

fn log_line_from_row(row: &SqliteRow) -> anyhow::Result<LogLine> {
    Ok(LogLine {
        deployment_id: row.try_get("deployment_id")?,
        seq: row.try_get("seq")?,
        at: row.try_get("at")?,
        server: row.try_get("server")?,
        step: row.try_get("step")?,
        stream: stream_from_row(row)?,
        line: row.try_get("line")?,
    })
}

fn outbox_from_row(row: &SqliteRow) -> anyhow::Result<OutboxItem> {
    let id: i64 = row.try_get("id")?;
    let kind = match row.try_get::<String, _>("kind")?.as_str() {
        "status" => OutboxKind::Status,
        "check" => OutboxKind::Check,
        other => anyhow::bail!("status_outbox row {id}: unknown kind `{other}`"),
    };
    Ok(OutboxItem {
        id,
        deployment_id: row.try_get("deployment_id")?,
        kind,
        body: row
            .try_get::<Option<String>, _>("body")?
            .map(|body| serde_json::from_str(&body))
            .transpose()?,
        state: row.try_get("state")?,
        description: row.try_get("description")?,
        log_url: row.try_get("log_url")?,
        environment_url: row.try_get("environment_url")?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        delivered_at: row.try_get("delivered_at")?,
        failed_at: row.try_get("failed_at")?,
        last_error: row.try_get("last_error")?,
        sending_since: row.try_get("sending_since")?,
    })
}

fn step_from_row(row: &SqliteRow) -> anyhow::Result<StepRun> {
    let state: String = row.try_get("state")?;
    Ok(StepRun {
        deployment_id: row.try_get("deployment_id")?,
        step_index: row.try_get("step_index")?,
        step: row.try_get("step")?,
        server: row.try_get("server")?,
        state: StepState::parse(&state).ok_or_else(|| {
            let deployment: i64 = row.try_get("deployment_id").unwrap_or_default();
            let step: String = row.try_get("step").unwrap_or_default();
            let server: String = row.try_get("server").unwrap_or_default();
            anyhow::anyhow!(
                "step run {step:?} on {server:?} of deployment {deployment} has an unknown state {state:?}"
            )
        })?,
        exit_code: row.try_get("exit_code")?,
        message: row.try_get("message")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

#[async_trait]
impl Deployments for Sqlite {
    async fn record_delivery(&self, delivery: Delivery) -> anyhow::Result<()> {
        self.writer.intake(None, Some(delivery)).await?;
        Ok(())
    }

    async fn insert_deployment(
        &self,
        deployment: NewDeployment,
        status: Option<StatusFn>,
        delivery: Option<Delivery>,
    ) -> anyhow::Result<Inserted> {
        let inserted = self
            .writer
            .intake(Some((deployment, status)), delivery)
            .await?;
        inserted.context("the database writer returned no deployment")
    }

    async fn deployment(&self, id: i64) -> anyhow::Result<Option<Deployment>> {
        let row = sqlx::query("SELECT * FROM deployments WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(deployment_from_row).transpose()
    }

    async fn has_github_deployment(&self, github_id: i64) -> anyhow::Result<bool> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM deployments WHERE github_id = ?")
                .bind(github_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    async fn newest_github_id(&self, repo: &str, environment: &str) -> anyhow::Result<Option<i64>> {
        let newest: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(github_id) FROM deployments WHERE repo = ? AND environment = ?",
        )
        .bind(repo)
        .bind(environment)
        .fetch_one(&self.pool)
        .await?;
        Ok(newest)
    }

    async fn list_deployments(&self, filter: &ListFilter) -> anyhow::Result<Vec<Deployment>> {
        let rows = sqlx::query(
            "SELECT * FROM deployments WHERE (?1 IS NULL OR repo = ?1) AND (?2 IS NULL OR environment = ?2)
               AND (?4 IS NULL OR state = ?4)
             ORDER BY id DESC LIMIT ?3",
        )
        .bind(&filter.repo)
        .bind(&filter.environment)
        .bind(if filter.limit > 0 { filter.limit } else { 50 })
        .bind(filter.state.map(State::as_str))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    async fn queued_environments(&self, limit: i64) -> anyhow::Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT repo, environment, MIN(id) AS oldest FROM deployments WHERE state = 'queued' \
             GROUP BY repo, environment ORDER BY oldest LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("repo")?, row.try_get("environment")?)))
            .collect()
    }

    async fn queued_in(&self, repo: &str, environment: &str) -> anyhow::Result<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT id FROM deployments WHERE state = 'queued' AND repo = ? AND environment = ? \
             ORDER BY id",
        )
        .bind(repo)
        .bind(environment)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok(row.try_get("id")?)).collect()
    }

    async fn running(&self) -> anyhow::Result<Vec<Deployment>> {
        let rows = sqlx::query("SELECT * FROM deployments WHERE state = 'running' ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    async fn transition(&self, id: i64, t: Transition) -> anyhow::Result<bool> {
        self.writer.transition(id, t).await
    }

    async fn add_orphan_jobs(&self, jobs: &[(String, String)]) -> anyhow::Result<()> {
        for (server, group) in jobs {
            self.writer
                .exec(
                    "INSERT OR IGNORE INTO orphan_jobs (server, job_group, since) VALUES (?, ?, ?)",
                    vec![server.clone().into(), group.clone().into(), now_ms().into()],
                )
                .await?;
        }
        Ok(())
    }

    async fn orphan_jobs(&self, server: Option<&str>) -> anyhow::Result<Vec<(String, String)>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT server, job_group FROM orphan_jobs WHERE ?1 IS NULL OR server = ?1
             ORDER BY since, server, job_group",
        )
        .bind(server)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    async fn orphan_killed(&self, server: &str, group: &str) -> anyhow::Result<()> {
        self.writer
            .exec(
                "DELETE FROM orphan_jobs WHERE server = ? AND job_group = ?",
                vec![server.into(), group.into()],
            )
            .await?;
        Ok(())
    }

    async fn save_step(&self, step: &StepRun) -> anyhow::Result<()> {
        self.writer.step(step.clone()).await
    }

    async fn steps(&self, deployment_id: i64) -> anyhow::Result<Vec<StepRun>> {
        let rows = sqlx::query(
            "SELECT * FROM step_runs WHERE deployment_id = ? ORDER BY step_index, server",
        )
        .bind(deployment_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(step_from_row).collect()
    }

    async fn latest_per_environment(
        &self,
        state: Option<State>,
    ) -> anyhow::Result<Vec<Deployment>> {
        let rows = sqlx::query(
            "SELECT * FROM deployments WHERE id IN
               (SELECT MAX(id) FROM deployments WHERE ?1 IS NULL OR state = ?1 GROUP BY repo, environment)
             ORDER BY repo, environment",
        )
        .bind(state.map(State::as_str))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(deployment_from_row).collect()
    }
}

#[async_trait]
impl DeploymentLogs for Sqlite {
    async fn append_logs(&self, lines: &[LogLine]) -> anyhow::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        self.writer.logs(lines.to_vec()).await
    }

    async fn logs(
        &self,
        deployment_id: i64,
        after_seq: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<LogLine>> {
        let rows = sqlx::query(
            "SELECT * FROM log_lines WHERE deployment_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(deployment_id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(log_line_from_row).collect()
    }

    async fn logs_before(
        &self,
        deployment_id: i64,
        before_seq: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<LogLine>> {
        let rows = sqlx::query(
            "SELECT * FROM (SELECT * FROM log_lines WHERE deployment_id = ? AND seq < ?
                ORDER BY seq DESC LIMIT ?) ORDER BY seq",
        )
        .bind(deployment_id)
        .bind(before_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(log_line_from_row).collect()
    }

    async fn step_output_tail(
        &self,
        deployment_id: i64,
        step: &str,
        server: &str,
        limit: i64,
    ) -> anyhow::Result<Vec<LogLine>> {
        let rows = sqlx::query(
            "SELECT * FROM (SELECT * FROM log_lines
                WHERE deployment_id = ? AND step = ? AND server = ? AND stream != 'dropship'
                ORDER BY seq DESC LIMIT ?) ORDER BY seq",
        )
        .bind(deployment_id)
        .bind(step)
        .bind(server)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(log_line_from_row).collect()
    }

    async fn last_log_seq(&self, deployment_id: i64) -> anyhow::Result<i64> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT MAX(seq) FROM log_lines WHERE deployment_id = ?")
                .bind(deployment_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(seq.unwrap_or(0))
    }
}

#[async_trait]
impl StatusOutbox for Sqlite {
    async fn due_statuses(&self, now: Millis, limit: i64) -> anyhow::Result<Vec<OutboxItem>> {
        let rows = sqlx::query(
            "SELECT o.* FROM status_outbox o
             WHERE o.delivered_at IS NULL AND o.failed_at IS NULL AND o.next_attempt_at <= ?
               AND NOT EXISTS (SELECT 1 FROM status_outbox earlier
                               WHERE earlier.deployment_id = o.deployment_id AND earlier.id < o.id
                                 AND earlier.delivered_at IS NULL AND earlier.failed_at IS NULL)
             ORDER BY o.next_attempt_at, o.id LIMIT ?",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(outbox_from_row).collect()
    }

    async fn next_status_due(&self) -> anyhow::Result<Option<Millis>> {
        // The earliest pending attempt; it may belong to a status waiting behind an earlier one,
        // which only means one early look.
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM status_outbox WHERE delivered_at IS NULL AND failed_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(next)
    }

    async fn status_sending(&self, id: i64) -> anyhow::Result<()> {
        self.writer
            .exec(
                "UPDATE status_outbox SET sending_since = COALESCE(sending_since, ?) WHERE id = ?",
                vec![now_ms().into(), id.into()],
            )
            .await?;
        Ok(())
    }

    async fn status_delivered(&self, id: i64) -> anyhow::Result<()> {
        self.writer.status(id, StatusChange::Delivered).await
    }

    async fn status_retry(
        &self,
        id: i64,
        next_attempt_at: Millis,
        error: &str,
        answered: bool,
    ) -> anyhow::Result<()> {
        self.writer
            .status(
                id,
                StatusChange::Retry {
                    at: next_attempt_at,
                    error: error.to_string(),
                    answered,
                },
            )
            .await
    }

    async fn status_failed(&self, id: i64, error: &str) -> anyhow::Result<()> {
        self.writer
            .status(
                id,
                StatusChange::Failed {
                    error: error.to_string(),
                },
            )
            .await
    }

    async fn statuses(&self, deployment_id: i64) -> anyhow::Result<Vec<OutboxItem>> {
        let rows = sqlx::query("SELECT * FROM status_outbox WHERE deployment_id = ? ORDER BY id")
            .bind(deployment_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(outbox_from_row).collect()
    }

    async fn enqueue_status(
        &self,
        deployment_id: i64,
        status: &super::StatusDraft,
    ) -> anyhow::Result<()> {
        let now = now_ms();
        self.writer
            .exec(
                "INSERT INTO status_outbox (deployment_id, state, description, log_url, environment_url, next_attempt_at, created_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
                vec![
                    deployment_id.into(),
                    status.state.as_str().into(),
                    status.description.clone().into(),
                    status.log_url.clone().into(),
                    status.environment_url.clone().into(),
                    now.into(),
                    now.into(),
                ],
            )
            .await?;
        Ok(())
    }

    async fn enqueue_check(&self, deployment_id: i64, check: &CheckDraft) -> anyhow::Result<()> {
        let now = now_ms();
        self.writer
            .exec(
                "INSERT INTO status_outbox (deployment_id, kind, state, description, body, next_attempt_at, created_at)
                 VALUES (?, 'check', ?, ?, ?, ?, ?)",
                vec![
                    deployment_id.into(),
                    check.status.as_str().into(),
                    check.title.clone().into(),
                    check.body.to_string().into(),
                    now.into(),
                    now.into(),
                ],
            )
            .await?;
        Ok(())
    }

    async fn set_check_run(&self, deployment_id: i64, check_run_id: i64) -> anyhow::Result<()> {
        self.writer
            .exec(
                "UPDATE deployments SET check_run_id = ? WHERE id = ?",
                vec![check_run_id.into(), deployment_id.into()],
            )
            .await?;
        Ok(())
    }
}

#[async_trait]
impl ContainerRecords for Sqlite {
    async fn save_services(&self, services: &[Service]) -> anyhow::Result<()> {
        self.writer.services(services.to_vec()).await
    }

    async fn services(&self, deployment_id: i64) -> anyhow::Result<Vec<Service>> {
        let rows = sqlx::query(
            "SELECT * FROM compose_services WHERE deployment_id = ? ORDER BY server, project, service, container",
        )
        .bind(deployment_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Service {
                    deployment_id: row.try_get("deployment_id")?,
                    server: row.try_get("server")?,
                    project: row.try_get("project")?,
                    service: row.try_get("service")?,
                    container: row.try_get("container")?,
                    state: row.try_get("state")?,
                    status: row.try_get("status")?,
                })
            })
            .collect()
    }

    async fn add_container_host(&self, server: &str) -> anyhow::Result<()> {
        self.writer.container_host(server.to_string()).await
    }

    async fn container_hosts(&self) -> anyhow::Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT server FROM container_hosts ORDER BY server")
                .fetch_all(&self.pool)
                .await?,
        )
    }
}

#[async_trait]
impl AppLogs for Sqlite {
    async fn append_app_logs(
        &self,
        lines: Vec<AppLogLine>,
        retention_bytes: i64,
    ) -> anyhow::Result<Vec<AppLogLine>> {
        if lines.is_empty() {
            return Ok(lines);
        }
        self.writer.app_logs(lines, retention_bytes).await
    }

    async fn app_logs(
        &self,
        repo: &str,
        environment: &str,
        after_id: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<AppLogLine>> {
        let rows = sqlx::query(
            "SELECT * FROM app_logs WHERE repo = ? AND environment = ? AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(repo)
        .bind(environment)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(app_log_from_row).collect()
    }

    async fn app_logs_tail(
        &self,
        repo: &str,
        environment: &str,
        limit: i64,
    ) -> anyhow::Result<Vec<AppLogLine>> {
        let rows = sqlx::query(
            "SELECT * FROM app_logs WHERE repo = ? AND environment = ? ORDER BY id DESC LIMIT ?",
        )
        .bind(repo)
        .bind(environment)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut lines = rows
            .iter()
            .map(app_log_from_row)
            .collect::<anyhow::Result<Vec<_>>>()?;
        lines.reverse();
        Ok(lines)
    }

    async fn log_cursor(&self, container: &str) -> anyhow::Result<Option<LogCursor>> {
        let row = sqlx::query("SELECT ts, at_ts FROM log_cursors WHERE container = ?")
            .bind(container)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(LogCursor {
                ts: row.try_get("ts")?,
                at_ts: row.try_get("at_ts")?,
            })
        })
        .transpose()
    }
}

#[async_trait]
impl RouteStore for Sqlite {
    async fn save_route(&self, route: &RouteRecord) -> anyhow::Result<()> {
        let key = (
            route.repo.clone(),
            route.environment.clone(),
            route.app.clone(),
        );
        self.writer.route(key, Some(route.clone())).await
    }

    async fn delete_route(&self, repo: &str, environment: &str, app: &str) -> anyhow::Result<()> {
        let key = (repo.to_string(), environment.to_string(), app.to_string());
        self.writer.route(key, None).await
    }

    async fn routes(&self) -> anyhow::Result<Vec<RouteRecord>> {
        let rows = sqlx::query("SELECT * FROM routes ORDER BY repo, environment, app")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(RouteRecord {
                    repo: row.try_get("repo")?,
                    environment: row.try_get("environment")?,
                    app: row.try_get("app")?,
                    hosts: serde_json::from_str(row.try_get("hosts")?)?,
                    path_prefix: row.try_get("path_prefix")?,
                    upstreams: serde_json::from_str(row.try_get("upstreams")?)?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl People for Sqlite {
    async fn create_session(
        &self,
        id_sha256: &str,
        user: &str,
        expires_at: Millis,
    ) -> anyhow::Result<()> {
        let now = now_ms();
        // Expired sessions go as new ones come.
        self.writer
            .exec(
                "DELETE FROM sessions WHERE expires_at <= ?",
                vec![now.into()],
            )
            .await?;
        self.writer
            .exec(
                "INSERT INTO sessions (id_sha256, user, created_at, expires_at) VALUES (?, ?, ?, ?)",
                vec![id_sha256.into(), user.into(), now.into(), expires_at.into()],
            )
            .await?;
        Ok(())
    }

    async fn session_user(&self, id_sha256: &str, now: Millis) -> anyhow::Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT user FROM sessions WHERE id_sha256 = ? AND expires_at > ?")
                .bind(id_sha256)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn delete_session(&self, id_sha256: &str) -> anyhow::Result<()> {
        self.writer
            .exec(
                "DELETE FROM sessions WHERE id_sha256 = ?",
                vec![id_sha256.into()],
            )
            .await?;
        Ok(())
    }

    async fn audit(&self, entry: &AuditEntry) -> anyhow::Result<()> {
        self.writer
            .exec(
                "INSERT INTO audit (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                vec![
                    entry.at.into(),
                    entry.actor.clone().into(),
                    entry.action.clone().into(),
                    entry.target.clone().into(),
                    entry.detail.clone().into(),
                ],
            )
            .await?;
        Ok(())
    }

    async fn audit_log(&self, limit: i64) -> anyhow::Result<Vec<AuditEntry>> {
        let rows = sqlx::query("SELECT * FROM audit ORDER BY id DESC LIMIT ?")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    at: row.try_get("at")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    target: row.try_get("target")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl EnvironmentStore for Sqlite {
    async fn set_preview(
        &self,
        repo: &str,
        environment: &str,
        git_ref: Option<&str>,
    ) -> anyhow::Result<()> {
        self.writer
            .preview(
                repo.to_string(),
                environment.to_string(),
                git_ref.map(str::to_string),
            )
            .await
    }

    async fn previews_of_ref(&self, repo: &str, git_ref: &str) -> anyhow::Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT environment FROM previews WHERE repo = ? AND git_ref = ? ORDER BY environment",
        )
        .bind(repo)
        .bind(git_ref)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn locks(&self, now: Millis) -> anyhow::Result<Vec<Lock>> {
        let rows = sqlx::query(
            "SELECT * FROM locks WHERE expires_at IS NULL OR expires_at > ? ORDER BY repo, environment",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Lock {
                    repo: row.try_get("repo")?,
                    environment: row.try_get("environment")?,
                    locked_by: row.try_get("locked_by")?,
                    reason: row.try_get("reason")?,
                    locked_at: row.try_get("locked_at")?,
                    expires_at: row.try_get("expires_at")?,
                })
            })
            .collect()
    }

    async fn lock(&self, lock: &Lock) -> anyhow::Result<bool> {
        let changed = self
            .writer
            .exec(
                "INSERT INTO locks (repo, environment, locked_by, reason, locked_at, expires_at)
                 VALUES (?, ?, ?, ?, ?, ?)
                 ON CONFLICT (repo, environment) DO UPDATE SET
                    locked_by = excluded.locked_by, reason = excluded.reason,
                    locked_at = excluded.locked_at, expires_at = excluded.expires_at
                 WHERE locks.expires_at IS NOT NULL AND locks.expires_at <= excluded.locked_at",
                vec![
                    lock.repo.clone().into(),
                    lock.environment.clone().into(),
                    lock.locked_by.clone().into(),
                    lock.reason.clone().into(),
                    lock.locked_at.into(),
                    lock.expires_at.into(),
                ],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn unlock(&self, repo: &str, environment: &str, now: Millis) -> anyhow::Result<bool> {
        let changed = self
            .writer
            .exec(
                "DELETE FROM locks WHERE repo = ? AND environment = ? AND (expires_at IS NULL OR expires_at > ?)",
                vec![repo.into(), environment.into(), now.into()],
            )
            .await?;
        Ok(changed == 1)
    }
}

#[async_trait]
impl AutoDeploys for Sqlite {
    async fn claim_auto_deploy(
        &self,
        repo: &str,
        environment: &str,
        sha: &str,
        trigger: &str,
    ) -> anyhow::Result<bool> {
        let changed = self
            .writer
            .exec(
                "INSERT OR IGNORE INTO auto_deploys (repo, environment, sha, trigger, created_at) VALUES (?, ?, ?, ?, ?)",
                vec![
                    repo.into(),
                    environment.into(),
                    sha.into(),
                    trigger.into(),
                    now_ms().into(),
                ],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn release_auto_deploy(
        &self,
        repo: &str,
        environment: &str,
        sha: &str,
    ) -> anyhow::Result<()> {
        self.writer
            .exec(
                "DELETE FROM auto_deploys WHERE repo = ? AND environment = ? AND sha = ?",
                vec![repo.into(), environment.into(), sha.into()],
            )
            .await?;
        Ok(())
    }
}

fn app_log_from_row(row: &SqliteRow) -> anyhow::Result<AppLogLine> {
    Ok(AppLogLine {
        id: row.try_get("id")?,
        repo: row.try_get("repo")?,
        environment: row.try_get("environment")?,
        app: row.try_get("app")?,
        server: row.try_get("server")?,
        container: row.try_get("container")?,
        ts: row.try_get("ts")?,
        stream: stream_from_row(row)?,
        line: row.try_get("line")?,
    })
}

#[cfg(test)]
mod tests {
    use super::Sqlite;

    /// A new store in a temporary directory, which lives as long as the guard.
    async fn fresh() -> (tempfile::TempDir, Sqlite) {
        let dir = tempfile::tempdir().unwrap();
        let store = Sqlite::open(&dir.path().join("dropship.db")).await.unwrap();
        (dir, store)
    }

    crate::store::contract::contract_tests!(fresh);

    /// A value the store cannot read back is an error that names its row, never a default.
    #[tokio::test]
    async fn an_unknown_value_in_a_row_is_an_error_naming_the_row() {
        use crate::store::*;
        let (dir, store) = fresh().await;
        let Inserted::New(deployment) = store
            .insert_deployment(
                NewDeployment {
                    github_id: Some(1),
                    repo: "acme/shop".into(),
                    environment: "production".into(),
                    task: "deploy".into(),
                    git_ref: "main".into(),
                    sha: "abc".into(),
                    payload: serde_json::json!({}),
                    description: None,
                    creator: None,
                    installation_id: None,
                    transient: false,
                    production: true,
                },
                None,
                None,
            )
            .await
            .unwrap()
        else {
            panic!("not new")
        };
        let id = deployment.id;
        store
            .save_step(&StepRun {
                deployment_id: id,
                step_index: 0,
                step: "build".into(),
                server: "web1".into(),
                state: StepState::Running,
                exit_code: None,
                message: None,
                started_at: None,
                finished_at: None,
            })
            .await
            .unwrap();
        store
            .append_logs(&[LogLine {
                deployment_id: id,
                seq: 1,
                at: 1,
                server: None,
                step: None,
                stream: LogStream::Stdout,
                line: "hello".into(),
            }])
            .await
            .unwrap();
        store
            .enqueue_check(
                id,
                &CheckDraft {
                    status: CheckStatus::Queued,
                    title: "queued".into(),
                    body: serde_json::json!({}),
                },
            )
            .await
            .unwrap();

        // Another writer damages the rows.
        let url = format!("sqlite://{}", dir.path().join("dropship.db").display());
        let damage = |sql: &'static str| {
            let url = url.clone();
            async move {
                let mut connection = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
                    .await
                    .unwrap();
                sqlx::query(sql).execute(&mut connection).await.unwrap();
            }
        };
        damage("UPDATE step_runs SET state = 'bogus'").await;
        damage("UPDATE log_lines SET stream = 'bogus'").await;
        damage("UPDATE status_outbox SET kind = 'bogus'").await;
        let error = format!("{:#}", store.steps(id).await.unwrap_err());
        assert!(
            error.contains(&format!("deployment {id}")) && error.contains("bogus"),
            "{error}"
        );
        let error = format!("{:#}", store.logs(id, 0, 10).await.unwrap_err());
        assert!(
            error.contains("log line 1") && error.contains("bogus"),
            "{error}"
        );
        let error = format!("{:#}", store.statuses(id).await.unwrap_err());
        assert!(error.contains("bogus"), "{error}");

        damage("UPDATE deployments SET state = 'bogus'").await;
        let error = format!("{:#}", store.deployment(id).await.unwrap_err());
        assert!(
            error.contains(&format!("deployment {id}")) && error.contains("bogus"),
            "{error}"
        );
        damage("UPDATE deployments SET state = 'queued', payload = '{'").await;
        let error = format!("{:#}", store.deployment(id).await.unwrap_err());
        assert!(
            error.contains(&format!("deployment {id} has a payload")),
            "{error}"
        );
    }
}
