//! [`Store`] on SQLite: WAL, migrations embedded; `synchronous = FULL` for webhook intake,
//! `NORMAL` (crash-safe in WAL mode) for the engine's bookkeeping.
//!
//! Webhook intake is group-committed: concurrent deliveries queue into one writer task that
//! writes a batch in one transaction and answers each caller after the commit, so every
//! acknowledged delivery is on disk while the fsync cost is shared.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::{
    Delivery, Deployment, Inserted, ListFilter, LogLine, Millis, NewDeployment, OutboxItem, State,
    StatusDraft, StatusFn, StepRun, StepState, Store, Transition, now_ms,
};

const INTAKE_BATCH: usize = 256;

pub struct Sqlite {
    pool: SqlitePool,
    intake: mpsc::Sender<IntakeJob>,
}

impl std::fmt::Debug for Sqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sqlite").finish_non_exhaustive()
    }
}

struct IntakeJob {
    deployment: Option<(NewDeployment, Option<StatusFn>)>,
    delivery: Option<Delivery>,
    reply: oneshot::Sender<anyhow::Result<Option<Inserted>>>,
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
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .with_context(|| format!("opening database {}", path.display()))?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .context("running database migrations")?;
        let (intake, jobs) = mpsc::channel(4 * INTAKE_BATCH);
        tokio::spawn(intake_writer(pool.clone(), jobs));
        Ok(Sqlite { pool, intake })
    }
}

async fn intake_writer(pool: SqlitePool, mut jobs: mpsc::Receiver<IntakeJob>) {
    let mut batch = Vec::with_capacity(INTAKE_BATCH);
    while jobs.recv_many(&mut batch, INTAKE_BATCH).await > 0 {
        let results = write_batch(&pool, &mut batch).await;
        match results {
            Ok(results) => {
                for (job, result) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(Ok(result));
                }
            }
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "writing webhook intake batch");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(anyhow::anyhow!(
                        "recording the delivery failed: {error:#}"
                    )));
                }
            }
        }
    }
}

async fn write_batch(
    pool: &SqlitePool,
    batch: &mut [IntakeJob],
) -> anyhow::Result<Vec<Option<Inserted>>> {
    let mut tx = pool.begin().await?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch.iter_mut() {
        let mut delivery = job.delivery.take();
        let inserted = match job.deployment.take() {
            None => None,
            Some((new, status)) => {
                let row = sqlx::query(
                    "INSERT INTO deployments (github_id, repo, environment, task, git_ref, sha, payload, description,
                        creator, installation_id, transient, production, token, state, created_at)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?)
                     ON CONFLICT (github_id) DO NOTHING
                     RETURNING *",
                )
                .bind(new.github_id)
                .bind(&new.repo)
                .bind(&new.environment)
                .bind(&new.task)
                .bind(&new.git_ref)
                .bind(&new.sha)
                .bind(new.payload.to_string())
                .bind(&new.description)
                .bind(&new.creator)
                .bind(new.installation_id)
                .bind(new.transient)
                .bind(new.production)
                .bind(&new.token)
                .bind(now_ms())
                .fetch_optional(&mut *tx)
                .await?;
                let inserted = match row {
                    Some(row) => {
                        let deployment = deployment_from_row(&row)?;
                        if let Some(status) = status {
                            insert_status(&mut tx, deployment.id, &status(&deployment)).await?;
                        }
                        Inserted::New(deployment)
                    }
                    None => {
                        let row = sqlx::query("SELECT * FROM deployments WHERE github_id = ?")
                            .bind(new.github_id)
                            .fetch_one(&mut *tx)
                            .await?;
                        Inserted::Duplicate(deployment_from_row(&row)?)
                    }
                };
                if let Some(delivery) = delivery.as_mut() {
                    let (id, result) = match &inserted {
                        Inserted::New(d) => (d.id, "accepted"),
                        Inserted::Duplicate(d) => (d.id, "duplicate"),
                    };
                    delivery.deployment_id = Some(id);
                    delivery.result = result;
                }
                Some(inserted)
            }
        };
        if let Some(delivery) = delivery {
            insert_delivery(&mut tx, &delivery).await?;
        }
        results.push(inserted);
    }
    tx.commit().await?;
    Ok(results)
}

async fn insert_delivery(
    tx: &mut sqlx::SqliteConnection,
    delivery: &Delivery,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO deliveries (delivery_id, event, action, result, deployment_id, received_at) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&delivery.delivery_id)
    .bind(&delivery.event)
    .bind(&delivery.action)
    .bind(delivery.result)
    .bind(delivery.deployment_id)
    .bind(now_ms())
    .execute(tx)
    .await?;
    Ok(())
}

async fn insert_status(
    tx: &mut sqlx::SqliteConnection,
    deployment_id: i64,
    status: &StatusDraft,
) -> anyhow::Result<()> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO status_outbox (deployment_id, state, description, log_url, environment_url, next_attempt_at, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(deployment_id)
    .bind(status.state)
    .bind(&status.description)
    .bind(&status.log_url)
    .bind(&status.environment_url)
    .bind(now)
    .bind(now)
    .execute(tx)
    .await?;
    Ok(())
}

fn deployment_from_row(row: &SqliteRow) -> anyhow::Result<Deployment> {
    let state: String = row.try_get("state")?;
    let payload: String = row.try_get("payload")?;
    Ok(Deployment {
        id: row.try_get("id")?,
        github_id: row.try_get("github_id")?,
        repo: row.try_get("repo")?,
        environment: row.try_get("environment")?,
        task: row.try_get("task")?,
        git_ref: row.try_get("git_ref")?,
        sha: row.try_get("sha")?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
        description: row.try_get("description")?,
        creator: row.try_get("creator")?,
        installation_id: row.try_get("installation_id")?,
        transient: row.try_get("transient")?,
        production: row.try_get("production")?,
        token: row.try_get("token")?,
        state: State::parse(&state)
            .with_context(|| format!("unknown deployment state `{state}` in the database"))?,
        state_description: row.try_get("state_description")?,
        environment_url: row.try_get("environment_url")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

fn outbox_from_row(row: &SqliteRow) -> anyhow::Result<OutboxItem> {
    Ok(OutboxItem {
        id: row.try_get("id")?,
        deployment_id: row.try_get("deployment_id")?,
        state: row.try_get("state")?,
        description: row.try_get("description")?,
        log_url: row.try_get("log_url")?,
        environment_url: row.try_get("environment_url")?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        delivered_at: row.try_get("delivered_at")?,
        failed_at: row.try_get("failed_at")?,
        last_error: row.try_get("last_error")?,
    })
}

fn step_from_row(row: &SqliteRow) -> anyhow::Result<StepRun> {
    let state: String = row.try_get("state")?;
    Ok(StepRun {
        deployment_id: row.try_get("deployment_id")?,
        step_index: row.try_get("step_index")?,
        step: row.try_get("step")?,
        server: row.try_get("server")?,
        state: StepState::parse(&state),
        exit_code: row.try_get("exit_code")?,
        message: row.try_get("message")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

#[async_trait]
impl Store for Sqlite {
    async fn record_delivery(&self, delivery: Delivery) -> anyhow::Result<()> {
        let (reply, answer) = oneshot::channel();
        self.intake
            .send(IntakeJob {
                deployment: None,
                delivery: Some(delivery),
                reply,
            })
            .await
            .map_err(|_| anyhow::anyhow!("the database writer has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the database writer has stopped"))??;
        Ok(())
    }

    async fn insert_deployment(
        &self,
        deployment: NewDeployment,
        status: Option<StatusFn>,
        delivery: Option<Delivery>,
    ) -> anyhow::Result<Inserted> {
        let (reply, answer) = oneshot::channel();
        self.intake
            .send(IntakeJob {
                deployment: Some((deployment, status)),
                delivery,
                reply,
            })
            .await
            .map_err(|_| anyhow::anyhow!("the database writer has stopped"))?;
        let inserted = answer
            .await
            .map_err(|_| anyhow::anyhow!("the database writer has stopped"))??;
        inserted.context("the database writer returned no deployment")
    }

    async fn deployment(&self, id: i64) -> anyhow::Result<Option<Deployment>> {
        let row = sqlx::query("SELECT * FROM deployments WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(deployment_from_row).transpose()
    }

    async fn list_deployments(&self, filter: &ListFilter) -> anyhow::Result<Vec<Deployment>> {
        let rows = sqlx::query(
            "SELECT * FROM deployments WHERE (?1 IS NULL OR repo = ?1) AND (?2 IS NULL OR environment = ?2)
             ORDER BY id DESC LIMIT ?3",
        )
        .bind(&filter.repo)
        .bind(&filter.environment)
        .bind(if filter.limit > 0 { filter.limit } else { 50 })
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    async fn queued(&self) -> anyhow::Result<Vec<Deployment>> {
        let rows = sqlx::query("SELECT * FROM deployments WHERE state = 'queued' ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    async fn running(&self) -> anyhow::Result<Vec<Deployment>> {
        let rows = sqlx::query("SELECT * FROM deployments WHERE state = 'running' ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    async fn transition(&self, id: i64, t: Transition) -> anyhow::Result<()> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let github_id: Option<Option<i64>> =
            sqlx::query_scalar("UPDATE deployments SET state = ?, state_description = ?,
                    environment_url = COALESCE(?, environment_url),
                    started_at = CASE WHEN ? = 'running' THEN ? ELSE started_at END,
                    finished_at = CASE WHEN ? IN ('success', 'failure', 'error') THEN ? ELSE finished_at END
                 WHERE id = ? RETURNING github_id")
                .bind(t.state.as_str())
                .bind(&t.description)
                .bind(&t.environment_url)
                .bind(t.state.as_str())
                .bind(now)
                .bind(t.state.as_str())
                .bind(now)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(github_id) = github_id else {
            anyhow::bail!("deployment {id} does not exist");
        };
        if let (Some(_), Some(status)) = (github_id, &t.status) {
            insert_status(&mut tx, id, status).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn save_step(&self, step: &StepRun) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO step_runs (deployment_id, step_index, step, server, state, exit_code, message, started_at, finished_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (deployment_id, step_index, server) DO UPDATE SET
                state = excluded.state, exit_code = excluded.exit_code, message = excluded.message,
                started_at = excluded.started_at, finished_at = excluded.finished_at",
        )
        .bind(step.deployment_id)
        .bind(step.step_index)
        .bind(&step.step)
        .bind(&step.server)
        .bind(step.state.as_str())
        .bind(step.exit_code)
        .bind(&step.message)
        .bind(step.started_at)
        .bind(step.finished_at)
        .execute(&self.pool)
        .await?;
        Ok(())
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

    async fn append_logs(&self, lines: &[LogLine]) -> anyhow::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for line in lines {
            sqlx::query(
                "INSERT OR IGNORE INTO log_lines (deployment_id, seq, at, server, step, stream, line) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(line.deployment_id)
            .bind(line.seq)
            .bind(line.at)
            .bind(&line.server)
            .bind(&line.step)
            .bind(&line.stream)
            .bind(&line.line)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
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
        rows.iter()
            .map(|row| {
                Ok(LogLine {
                    deployment_id: row.try_get("deployment_id")?,
                    seq: row.try_get("seq")?,
                    at: row.try_get("at")?,
                    server: row.try_get("server")?,
                    step: row.try_get("step")?,
                    stream: row.try_get("stream")?,
                    line: row.try_get("line")?,
                })
            })
            .collect()
    }

    async fn last_log_seq(&self, deployment_id: i64) -> anyhow::Result<i64> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT MAX(seq) FROM log_lines WHERE deployment_id = ?")
                .bind(deployment_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(seq.unwrap_or(0))
    }

    async fn due_statuses(&self, now: Millis) -> anyhow::Result<Vec<OutboxItem>> {
        let rows = sqlx::query(
            "SELECT o.* FROM status_outbox o
             JOIN (SELECT deployment_id, MIN(id) AS id FROM status_outbox
                   WHERE delivered_at IS NULL AND failed_at IS NULL GROUP BY deployment_id) first ON first.id = o.id
             WHERE o.next_attempt_at <= ? ORDER BY o.id",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(outbox_from_row).collect()
    }

    async fn next_status_due(&self) -> anyhow::Result<Option<Millis>> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(o.next_attempt_at) FROM status_outbox o
             JOIN (SELECT deployment_id, MIN(id) AS id FROM status_outbox
                   WHERE delivered_at IS NULL AND failed_at IS NULL GROUP BY deployment_id) first ON first.id = o.id",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(next)
    }

    async fn status_delivered(&self, id: i64) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE status_outbox SET delivered_at = ?, attempts = attempts + 1 WHERE id = ?",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn status_retry(
        &self,
        id: i64,
        next_attempt_at: Millis,
        error: &str,
    ) -> anyhow::Result<()> {
        sqlx::query("UPDATE status_outbox SET next_attempt_at = ?, attempts = attempts + 1, last_error = ? WHERE id = ?")
            .bind(next_attempt_at)
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn status_failed(&self, id: i64, error: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE status_outbox SET failed_at = ?, attempts = attempts + 1, last_error = ? WHERE id = ?")
            .bind(now_ms())
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn statuses(&self, deployment_id: i64) -> anyhow::Result<Vec<OutboxItem>> {
        let rows = sqlx::query("SELECT * FROM status_outbox WHERE deployment_id = ? ORDER BY id")
            .bind(deployment_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(outbox_from_row).collect()
    }
}
