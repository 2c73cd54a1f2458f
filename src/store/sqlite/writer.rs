//! The one writer: every write to the database goes through this task. Each cycle takes what
//! has queued up (deliveries first), applies it all in one transaction and answers every caller
//! only after that transaction's single commit (`synchronous = FULL`). Under load that is one
//! fsync for hundreds of writes; idle, a write commits at once.

use std::collections::HashMap;

use anyhow::Context;
use sqlx::{Row, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::deployment_from_row;
use crate::store::{
    AppLogLine, Delivery, DeliveryResult, Deployment, Inserted, LogLine, Millis, NewDeployment,
    RouteRecord, Service, StatusDraft, StatusFn, StepRun, Transition, now_ms,
};

/// Writes taken in one cycle at most.
const CYCLE: usize = 512;
/// Writes waiting for the writer at most; callers wait for room beyond that (each caller also
/// waits for its own write's commit, so this is reached only by many callers at once).
const QUEUE: usize = 4096;

/// A delivery (and maybe its deployment) to record.
pub(super) struct IntakeJob {
    pub(super) deployment: Option<(NewDeployment, Option<StatusFn>)>,
    pub(super) delivery: Option<Delivery>,
    pub(super) reply: oneshot::Sender<anyhow::Result<Option<Inserted>>>,
}

pub(super) enum StatusChange {
    Delivered,
    Retry {
        at: Millis,
        error: String,
        answered: bool,
    },
    Failed {
        error: String,
    },
}

enum Write {
    Intake(Box<IntakeJob>),
    Transition {
        id: i64,
        transition: Transition,
        reply: oneshot::Sender<anyhow::Result<bool>>,
    },
    Step {
        step: StepRun,
        reply: oneshot::Sender<anyhow::Result<()>>,
    },
    Logs {
        lines: Vec<LogLine>,
        reply: oneshot::Sender<anyhow::Result<()>>,
    },
    Status {
        id: i64,
        change: StatusChange,
        reply: oneshot::Sender<anyhow::Result<()>>,
    },
    Services {
        services: Vec<Service>,
        reply: oneshot::Sender<anyhow::Result<()>>,
    },
    AppLogs {
        lines: Vec<AppLogLine>,
        retention_bytes: i64,
        reply: oneshot::Sender<anyhow::Result<Vec<AppLogLine>>>,
    },
    ContainerHost {
        server: String,
        reply: oneshot::Sender<anyhow::Result<()>>,
    },
    /// A preview remembered (with its ref) or forgotten.
    Preview {
        repo: String,
        environment: String,
        git_ref: Option<String>,
        reply: oneshot::Sender<anyhow::Result<()>>,
    },
    /// One statement of the rarer kinds (sessions, audit, locks, ...), with its arguments.
    Exec {
        sql: &'static str,
        args: Vec<Arg>,
        reply: oneshot::Sender<anyhow::Result<u64>>,
    },
    /// A route saved, or (with `None`) the route of (repo, environment, app) deleted.
    Route {
        key: (String, String, String),
        route: Option<RouteRecord>,
        reply: oneshot::Sender<anyhow::Result<()>>,
    },
}

/// What a cycle owes one caller once the commit is known.
enum Answer {
    Bool(oneshot::Sender<anyhow::Result<bool>>, anyhow::Result<bool>),
    Count(oneshot::Sender<anyhow::Result<u64>>, anyhow::Result<u64>),
    Unit(oneshot::Sender<anyhow::Result<()>>, anyhow::Result<()>),
    Lines(
        oneshot::Sender<anyhow::Result<Vec<AppLogLine>>>,
        anyhow::Result<Vec<AppLogLine>>,
    ),
}

/// An argument of [`Write::Exec`].
#[derive(Debug, Clone)]
pub(super) enum Arg {
    Int(i64),
    Text(String),
    Null,
}

impl From<i64> for Arg {
    fn from(value: i64) -> Self {
        Arg::Int(value)
    }
}

impl From<&str> for Arg {
    fn from(value: &str) -> Self {
        Arg::Text(value.to_string())
    }
}

impl From<String> for Arg {
    fn from(value: String) -> Self {
        Arg::Text(value)
    }
}

impl<T: Into<Arg>> From<Option<T>> for Arg {
    fn from(value: Option<T>) -> Self {
        value.map_or(Arg::Null, Into::into)
    }
}

/// The handle every write method uses.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    sender: mpsc::Sender<Write>,
}

fn stopped() -> anyhow::Error {
    anyhow::anyhow!("the database writer has stopped")
}

impl Writer {
    /// Starts the writer task on `pool`, whose one connection is the only one that writes.
    pub(super) fn start(pool: SqlitePool) -> Writer {
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, receiver));
        Writer { sender }
    }

    /// Sends one write, built around its reply channel, and waits for its commit.
    async fn request<T>(
        &self,
        write: impl FnOnce(oneshot::Sender<anyhow::Result<T>>) -> Write,
    ) -> anyhow::Result<T> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(write(reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    pub(super) async fn intake(
        &self,
        deployment: Option<(NewDeployment, Option<StatusFn>)>,
        delivery: Option<Delivery>,
    ) -> anyhow::Result<Option<Inserted>> {
        self.request(|reply| {
            Write::Intake(Box::new(IntakeJob {
                deployment,
                delivery,
                reply,
            }))
        })
        .await
    }

    pub(super) async fn transition(&self, id: i64, transition: Transition) -> anyhow::Result<bool> {
        self.request(|reply| Write::Transition {
            id,
            transition,
            reply,
        })
        .await
    }

    pub(super) async fn step(&self, step: StepRun) -> anyhow::Result<()> {
        self.request(|reply| Write::Step { step, reply }).await
    }

    pub(super) async fn logs(&self, lines: Vec<LogLine>) -> anyhow::Result<()> {
        self.request(|reply| Write::Logs { lines, reply }).await
    }

    pub(super) async fn services(&self, services: Vec<Service>) -> anyhow::Result<()> {
        self.request(|reply| Write::Services { services, reply })
            .await
    }

    pub(super) async fn app_logs(
        &self,
        lines: Vec<AppLogLine>,
        retention_bytes: i64,
    ) -> anyhow::Result<Vec<AppLogLine>> {
        self.request(|reply| Write::AppLogs {
            lines,
            retention_bytes,
            reply,
        })
        .await
    }

    pub(super) async fn route(
        &self,
        key: (String, String, String),
        route: Option<RouteRecord>,
    ) -> anyhow::Result<()> {
        self.request(|reply| Write::Route { key, route, reply })
            .await
    }

    pub(super) async fn preview(
        &self,
        repo: String,
        environment: String,
        git_ref: Option<String>,
    ) -> anyhow::Result<()> {
        self.request(|reply| Write::Preview {
            repo,
            environment,
            git_ref,
            reply,
        })
        .await
    }

    pub(super) async fn container_host(&self, server: String) -> anyhow::Result<()> {
        self.request(|reply| Write::ContainerHost { server, reply })
            .await
    }

    /// Runs one statement in the writer's next transaction; answers the rows it changed.
    pub(super) async fn exec(&self, sql: &'static str, args: Vec<Arg>) -> anyhow::Result<u64> {
        self.request(|reply| Write::Exec { sql, args, reply }).await
    }

    pub(super) async fn status(&self, id: i64, change: StatusChange) -> anyhow::Result<()> {
        self.request(|reply| Write::Status { id, change, reply })
            .await
    }
}

async fn run(pool: SqlitePool, mut receiver: mpsc::Receiver<Write>) {
    let mut writes = Vec::with_capacity(CYCLE);
    while receiver.recv_many(&mut writes, CYCLE).await > 0 {
        let mut intake = Vec::new();
        let mut others = Vec::new();
        for write in writes.drain(..) {
            match write {
                Write::Intake(job) => intake.push(*job),
                other => others.push(other),
            }
        }
        match cycle(&pool, &mut intake, others).await {
            Ok((inserted, answers)) => {
                for (job, result) in intake.into_iter().zip(inserted) {
                    let _ = job.reply.send(Ok(result));
                }
                for answer in answers {
                    match answer {
                        Answer::Bool(reply, result) => drop(reply.send(result)),
                        Answer::Count(reply, result) => drop(reply.send(result)),
                        Answer::Unit(reply, result) => drop(reply.send(result)),
                        Answer::Lines(reply, result) => drop(reply.send(result)),
                    }
                }
            }
            Err((error, answers)) => {
                tracing::error!(error = format!("{error:#}"), "database write failed");
                for job in intake {
                    let _ = job
                        .reply
                        .send(Err(anyhow::anyhow!("recording failed: {error:#}")));
                }
                for answer in answers {
                    match answer {
                        Answer::Bool(reply, _) => {
                            drop(reply.send(Err(anyhow::anyhow!("write failed: {error:#}"))))
                        }
                        Answer::Count(reply, _) => {
                            drop(reply.send(Err(anyhow::anyhow!("write failed: {error:#}"))))
                        }
                        Answer::Unit(reply, _) => {
                            drop(reply.send(Err(anyhow::anyhow!("write failed: {error:#}"))))
                        }
                        Answer::Lines(reply, _) => {
                            drop(reply.send(Err(anyhow::anyhow!("write failed: {error:#}"))))
                        }
                    }
                }
            }
        }
    }
}

type CycleResult = Result<(Vec<Option<Inserted>>, Vec<Answer>), (anyhow::Error, Vec<Answer>)>;

/// One transaction: deliveries, then every other write in arrival order. A write that fails
/// on its own is answered with its error and leaves nothing behind (SQLite undoes the failed
/// statement; a transition's two statements share a savepoint); only a failed commit fails
/// everyone.
async fn cycle(pool: &SqlitePool, intake: &mut [IntakeJob], others: Vec<Write>) -> CycleResult {
    let mut answers = Vec::with_capacity(others.len());
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(error) => {
            return Err((
                error.into(),
                others.into_iter().filter_map(unanswered).collect(),
            ));
        }
    };
    let inserted = if intake.is_empty() {
        Vec::new()
    } else {
        match write_intake(&mut tx, intake).await {
            Ok(inserted) => inserted,
            Err(error) => return Err((error, others.into_iter().filter_map(unanswered).collect())),
        }
    };
    for write in others {
        let answer = match write {
            Write::Transition {
                id,
                transition,
                reply,
            } => Answer::Bool(reply, apply_transition(&mut tx, id, &transition).await),
            Write::Step { step, reply } => Answer::Unit(reply, save_step(&mut tx, &step).await),
            Write::Logs { lines, reply } => Answer::Unit(reply, append_logs(&mut tx, &lines).await),
            Write::Status { id, change, reply } => {
                Answer::Unit(reply, change_status(&mut tx, id, &change).await)
            }
            Write::Services { services, reply } => {
                Answer::Unit(reply, save_services(&mut tx, &services).await)
            }
            Write::AppLogs {
                lines,
                retention_bytes,
                reply,
            } => Answer::Lines(
                reply,
                append_app_logs(&mut tx, lines, retention_bytes).await,
            ),
            Write::ContainerHost { server, reply } => Answer::Unit(
                reply,
                sqlx::query("INSERT OR IGNORE INTO container_hosts (server) VALUES (?)")
                    .bind(&server)
                    .execute(&mut *tx)
                    .await
                    .map(|_| ())
                    .map_err(Into::into),
            ),
            Write::Preview {
                repo,
                environment,
                git_ref,
                reply,
            } => Answer::Unit(
                reply,
                match git_ref {
                    Some(git_ref) => sqlx::query(
                        "INSERT OR REPLACE INTO previews (repo, environment, git_ref) VALUES (?, ?, ?)",
                    )
                    .bind(&repo)
                    .bind(&environment)
                    .bind(&git_ref)
                    .execute(&mut *tx)
                    .await
                    .map(|_| ())
                    .map_err(Into::into),
                    None => sqlx::query("DELETE FROM previews WHERE repo = ? AND environment = ?")
                        .bind(&repo)
                        .bind(&environment)
                        .execute(&mut *tx)
                        .await
                        .map(|_| ())
                        .map_err(Into::into),
                },
            ),
            Write::Exec { sql, args, reply } => {
                Answer::Count(reply, exec(&mut tx, sql, &args).await)
            }
            Write::Route { key, route, reply } => {
                Answer::Unit(reply, write_route(&mut tx, &key, route.as_ref()).await)
            }
            Write::Intake(_) => unreachable!("deliveries are split off before the cycle"),
        };
        answers.push(answer);
    }
    match tx.commit().await {
        Ok(()) => Ok((inserted, answers)),
        Err(error) => Err((error.into(), answers)),
    }
}

/// The reply channel of a write that never ran.
fn unanswered(write: Write) -> Option<Answer> {
    Some(match write {
        Write::Transition { reply, .. } => Answer::Bool(reply, Ok(false)),
        Write::Exec { reply, .. } => Answer::Count(reply, Ok(0)),
        Write::Step { reply, .. }
        | Write::Logs { reply, .. }
        | Write::Status { reply, .. }
        | Write::Services { reply, .. }
        | Write::ContainerHost { reply, .. }
        | Write::Route { reply, .. }
        | Write::Preview { reply, .. } => Answer::Unit(reply, Ok(())),
        Write::AppLogs { reply, .. } => Answer::Lines(reply, Ok(Vec::new())),
        Write::Intake(_) => return None,
    })
}

async fn apply_transition(
    tx: &mut SqliteConnection,
    id: i64,
    t: &Transition,
) -> anyhow::Result<bool> {
    use sqlx::Connection;
    let now = now_ms();
    let mut savepoint = tx.begin().await?;
    let github_id: Option<Option<i64>> = sqlx::query_scalar(
        "UPDATE deployments SET state = ?, state_description = ?,
            environment_url = COALESCE(?, environment_url),
            started_at = CASE WHEN ? = 'running' THEN ? ELSE started_at END,
            finished_at = CASE WHEN ? IN ('success', 'failure', 'error') THEN ? ELSE finished_at END
         WHERE id = ? AND (? != 'running' OR (state = 'queued' AND NOT EXISTS (
               SELECT 1 FROM deployments other WHERE other.repo = deployments.repo
                 AND other.environment = deployments.environment AND other.state = 'running')))
           AND state NOT IN ('failure', 'error', 'inactive') AND (state != 'success' OR ? = 'inactive')
         RETURNING github_id",
    )
    .bind(t.state.as_str())
    .bind(&t.description)
    .bind(&t.environment_url)
    .bind(t.state.as_str())
    .bind(now)
    .bind(t.state.as_str())
    .bind(now)
    .bind(id)
    .bind(t.state.as_str())
    .bind(t.state.as_str())
    .fetch_optional(&mut *savepoint)
    .await?;
    let Some(github_id) = github_id else {
        // Gone, ended (only a success may still become inactive), or (moving to running) no
        // longer queued, or its environment runs another: nothing changes.
        return Ok(false);
    };
    if let (Some(_), Some(status)) = (github_id, &t.status) {
        insert_status(&mut savepoint, id, status).await?;
    }
    if let (Some(_), Some(check)) = (github_id, &t.check) {
        sqlx::query(
            "INSERT INTO status_outbox (deployment_id, kind, state, description, body, next_attempt_at, created_at)
             VALUES (?, 'check', ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(check.status.as_str())
        .bind(&check.title)
        .bind(check.body.to_string())
        .bind(now)
        .bind(now)
        .execute(&mut *savepoint)
        .await?;
    }
    savepoint.commit().await?;
    Ok(true)
}

async fn exec(tx: &mut SqliteConnection, sql: &str, args: &[Arg]) -> anyhow::Result<u64> {
    let mut query = sqlx::query(sql);
    for arg in args {
        query = match arg {
            Arg::Int(value) => query.bind(*value),
            Arg::Text(value) => query.bind(value.clone()),
            Arg::Null => query.bind(None::<String>),
        };
    }
    Ok(query.execute(tx).await?.rows_affected())
}

async fn save_step(tx: &mut SqliteConnection, step: &StepRun) -> anyhow::Result<()> {
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
    .execute(tx)
    .await?;
    Ok(())
}

async fn append_logs(tx: &mut SqliteConnection, lines: &[LogLine]) -> anyhow::Result<()> {
    // Multi-row statements, a few hundred lines each (SQLite's bound-parameter limit).
    for chunk in lines.chunks(500) {
        let mut insert = sqlx::QueryBuilder::new(
            "INSERT OR IGNORE INTO log_lines (deployment_id, seq, at, server, step, stream, line) ",
        );
        insert.push_values(chunk, |mut row, line| {
            row.push_bind(line.deployment_id)
                .push_bind(line.seq)
                .push_bind(line.at)
                .push_bind(&line.server)
                .push_bind(&line.step)
                .push_bind(line.stream.as_str())
                .push_bind(&line.line);
        });
        insert.build().execute(&mut *tx).await?;
    }
    Ok(())
}

async fn save_services(tx: &mut SqliteConnection, services: &[Service]) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut tx = tx.begin().await?;
    for s in services {
        sqlx::query(
            "INSERT OR REPLACE INTO compose_services (deployment_id, server, project, service, container, state, status)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(s.deployment_id)
        .bind(&s.server)
        .bind(&s.project)
        .bind(&s.service)
        .bind(&s.container)
        .bind(&s.state)
        .bind(&s.status)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn append_app_logs(
    tx: &mut SqliteConnection,
    mut lines: Vec<AppLogLine>,
    retention_bytes: i64,
) -> anyhow::Result<Vec<AppLogLine>> {
    use sqlx::Connection;
    // A savepoint: all of the batch, cursors included, or none of it.
    let mut tx = tx.begin().await?;
    let mut totals: HashMap<(String, String, String), i64> = HashMap::new();
    let mut cursors: HashMap<String, (i64, i64)> = HashMap::new();
    for line in &mut lines {
        let key = (
            line.repo.clone(),
            line.environment.clone(),
            line.app.clone(),
        );
        let total = match totals.get(&key) {
            Some(total) => *total,
            None => {
                sqlx::query_scalar::<_, i64>(
                    "SELECT COALESCE(MAX(total_bytes), 0) FROM app_logs WHERE repo = ? AND environment = ? AND app = ?",
                )
                .bind(&key.0)
                .bind(&key.1)
                .bind(&key.2)
                .fetch_one(&mut *tx)
                .await?
            }
        };
        let total = total + line.line.len() as i64 + 1;
        totals.insert(key, total);
        line.id = sqlx::query_scalar::<_, i64>(
            "INSERT INTO app_logs (repo, environment, app, server, container, ts, stream, line, total_bytes)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&line.repo)
        .bind(&line.environment)
        .bind(&line.app)
        .bind(&line.server)
        .bind(&line.container)
        .bind(line.ts)
        .bind(line.stream.as_str())
        .bind(&line.line)
        .bind(total)
        .fetch_one(&mut *tx)
        .await?;
        let cursor = cursors.entry(line.container.clone()).or_insert((0, 0));
        if line.ts > cursor.0 {
            *cursor = (line.ts, 1);
        } else if line.ts == cursor.0 {
            cursor.1 += 1;
        }
    }
    for (container, (ts, count)) in cursors {
        // A batch that continues at the stored timestamp adds to its count.
        sqlx::query(
            "INSERT INTO log_cursors (container, ts, at_ts) VALUES (?, ?, ?)
             ON CONFLICT (container) DO UPDATE SET
                at_ts = CASE WHEN excluded.ts = log_cursors.ts THEN log_cursors.at_ts + excluded.at_ts ELSE excluded.at_ts END,
                ts = MAX(log_cursors.ts, excluded.ts)
             WHERE excluded.ts >= log_cursors.ts",
        )
        .bind(&container)
        .bind(ts)
        .bind(count)
        .execute(&mut *tx)
        .await?;
    }
    for ((repo, environment, app), total) in totals {
        sqlx::query(
            "DELETE FROM app_logs WHERE repo = ? AND environment = ? AND app = ? AND total_bytes <= ?",
        )
        .bind(&repo)
        .bind(&environment)
        .bind(&app)
        .bind(total - retention_bytes)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(lines)
}

async fn write_route(
    tx: &mut SqliteConnection,
    (repo, environment, app): &(String, String, String),
    route: Option<&RouteRecord>,
) -> anyhow::Result<()> {
    match route {
        Some(route) => {
            sqlx::query(
                "INSERT OR REPLACE INTO routes (repo, environment, app, hosts, path_prefix, upstreams, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(repo)
            .bind(environment)
            .bind(app)
            .bind(serde_json::to_string(&route.hosts)?)
            .bind(&route.path_prefix)
            .bind(serde_json::to_string(&route.upstreams)?)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM routes WHERE repo = ? AND environment = ? AND app = ?")
                .bind(repo)
                .bind(environment)
                .bind(app)
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(())
}

async fn change_status(
    tx: &mut SqliteConnection,
    id: i64,
    change: &StatusChange,
) -> anyhow::Result<()> {
    let query = match change {
        StatusChange::Delivered => {
            sqlx::query("UPDATE status_outbox SET delivered_at = ?, attempts = attempts + 1 WHERE id = ?")
                .bind(now_ms())
                .bind(id)
        }
        StatusChange::Retry {
            at,
            error,
            answered,
        } => sqlx::query(
            "UPDATE status_outbox SET next_attempt_at = ?, attempts = attempts + 1, last_error = ?,
                sending_since = CASE WHEN ? THEN NULL ELSE sending_since END WHERE id = ?",
        )
        .bind(*at)
        .bind(error.clone())
        .bind(*answered)
        .bind(id),
        StatusChange::Failed { error } => sqlx::query(
            "UPDATE status_outbox SET failed_at = ?, attempts = attempts + 1, last_error = ? WHERE id = ?",
        )
        .bind(now_ms())
        .bind(error.clone())
        .bind(id),
    };
    query.execute(tx).await?;
    Ok(())
}

async fn insert_status(
    tx: &mut SqliteConnection,
    deployment_id: i64,
    status: &StatusDraft,
) -> anyhow::Result<()> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO status_outbox (deployment_id, state, description, log_url, environment_url, next_attempt_at, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(deployment_id)
    .bind(status.state.as_str())
    .bind(&status.description)
    .bind(&status.log_url)
    .bind(&status.environment_url)
    .bind(now)
    .bind(now)
    .execute(tx)
    .await?;
    Ok(())
}

/// Writes a batch of deliveries with a few multi-row statements (not a few per row):
/// SQLite is fast, but every statement is a hop to the connection's thread.
async fn write_intake(
    tx: &mut SqliteConnection,
    batch: &mut [IntakeJob],
) -> anyhow::Result<Vec<Option<Inserted>>> {
    let now = now_ms();
    let mut results: Vec<Option<Inserted>> = vec![None; batch.len()];
    let new: Vec<(usize, NewDeployment, Option<StatusFn>)> = batch
        .iter_mut()
        .enumerate()
        .filter_map(|(i, job)| job.deployment.take().map(|(d, status)| (i, d, status)))
        .collect();
    if !new.is_empty() {
        let rows: Vec<(usize, &NewDeployment)> = new.iter().map(|(i, d, _)| (*i, d)).collect();
        let mut inserted = insert_deployments(tx, &rows, now).await?;
        let duplicate_ids: Vec<i64> = new
            .iter()
            .filter(|(index, _, _)| !inserted.contains_key(index))
            .filter_map(|(_, d, _)| d.github_id)
            .collect();
        let duplicates = deployments_by_github_id(tx, &duplicate_ids).await?;
        let mut statuses: Vec<(i64, StatusDraft)> = Vec::new();
        for (index, d, status) in new {
            let outcome = match inserted.remove(&index) {
                Some(deployment) => {
                    if let Some(status) = status {
                        statuses.push((deployment.id, status(&deployment)));
                    }
                    Inserted::New(deployment)
                }
                None => {
                    let github_id = d
                        .github_id
                        .context("a deployment without a GitHub id was not inserted")?;
                    let existing = duplicates.get(&github_id).cloned();
                    Inserted::Duplicate(existing.context("a duplicate deployment vanished")?)
                }
            };
            if let Some(delivery) = batch[index].delivery.as_mut() {
                let (id, result) = match &outcome {
                    Inserted::New(d) => (d.id, DeliveryResult::Accepted),
                    Inserted::Duplicate(d) => (d.id, DeliveryResult::Duplicate),
                };
                delivery.deployment_id = Some(id);
                delivery.result = result;
            }
            results[index] = Some(outcome);
        }
        insert_first_statuses(tx, &statuses, now).await?;
    }
    let deliveries: Vec<&Delivery> = batch
        .iter()
        .filter_map(|job| job.delivery.as_ref())
        .collect();
    insert_deliveries(tx, &deliveries, now).await?;
    Ok(results)
}

/// Inserts the batch's new deployments, `queued`, in one statement; those GitHub already
/// delivered (a `github_id` recorded) are left out. Returns the inserted rows by their place
/// in the batch.
async fn insert_deployments(
    tx: &mut SqliteConnection,
    new: &[(usize, &NewDeployment)],
    now: Millis,
) -> anyhow::Result<HashMap<usize, Deployment>> {
    let mut insert = sqlx::QueryBuilder::new(
        "INSERT INTO deployments (github_id, repo, environment, task, git_ref, sha, payload, description,
            creator, installation_id, transient, production, insert_key, state, created_at) ",
    );
    insert.push_values(new, |mut row, (index, d)| {
        row.push_bind(d.github_id)
            .push_bind(&d.repo)
            .push_bind(&d.environment)
            .push_bind(&d.task)
            .push_bind(&d.git_ref)
            .push_bind(d.sha.as_str())
            .push_bind(d.payload.to_string())
            .push_bind(&d.description)
            .push_bind(&d.creator)
            .push_bind(d.installation_id)
            .push_bind(d.transient)
            .push_bind(d.production)
            .push_bind(index.to_string())
            .push_bind("queued")
            .push_bind(now);
    });
    insert.push(" ON CONFLICT (github_id) DO NOTHING RETURNING *");
    // RETURNING's order is unspecified: match rows by their place in this batch.
    let mut inserted: HashMap<usize, Deployment> = HashMap::new();
    for row in insert.build().fetch_all(&mut *tx).await? {
        let key: String = row.try_get("insert_key")?;
        let index = key
            .parse()
            .with_context(|| format!("an inserted deployment's insert_key is `{key}`"))?;
        inserted.insert(index, deployment_from_row(&row)?);
    }
    Ok(inserted)
}

/// The recorded deployments with these GitHub ids, by GitHub id.
async fn deployments_by_github_id(
    tx: &mut SqliteConnection,
    ids: &[i64],
) -> anyhow::Result<HashMap<i64, Deployment>> {
    let mut found: HashMap<i64, Deployment> = HashMap::new();
    if ids.is_empty() {
        return Ok(found);
    }
    let mut select = sqlx::QueryBuilder::new("SELECT * FROM deployments WHERE github_id IN (");
    let mut separated = select.separated(", ");
    for id in ids {
        separated.push_bind(*id);
    }
    select.push(")");
    for row in select.build().fetch_all(&mut *tx).await? {
        let deployment = deployment_from_row(&row)?;
        found.insert(deployment.github_id.unwrap_or_default(), deployment);
    }
    Ok(found)
}

/// Queues each new deployment's first status (`queued`) for GitHub.
async fn insert_first_statuses(
    tx: &mut SqliteConnection,
    statuses: &[(i64, StatusDraft)],
    now: Millis,
) -> anyhow::Result<()> {
    if statuses.is_empty() {
        return Ok(());
    }
    let mut insert = sqlx::QueryBuilder::new(
        "INSERT INTO status_outbox (deployment_id, state, description, log_url, environment_url, next_attempt_at, created_at) ",
    );
    insert.push_values(statuses, |mut row, (id, status)| {
        row.push_bind(*id)
            .push_bind(status.state.as_str())
            .push_bind(&status.description)
            .push_bind(&status.log_url)
            .push_bind(&status.environment_url)
            .push_bind(now)
            .push_bind(now);
    });
    insert.build().execute(&mut *tx).await?;
    Ok(())
}

/// Records the batch's deliveries with what became of each.
async fn insert_deliveries(
    tx: &mut SqliteConnection,
    deliveries: &[&Delivery],
    now: Millis,
) -> anyhow::Result<()> {
    if deliveries.is_empty() {
        return Ok(());
    }
    let mut insert = sqlx::QueryBuilder::new(
        "INSERT INTO deliveries (delivery_id, event, action, result, deployment_id, received_at) ",
    );
    insert.push_values(deliveries, |mut row, delivery| {
        row.push_bind(&delivery.delivery_id)
            .push_bind(&delivery.event)
            .push_bind(&delivery.action)
            .push_bind(delivery.result.as_str())
            .push_bind(delivery.deployment_id)
            .push_bind(now);
    });
    insert.build().execute(&mut *tx).await?;
    Ok(())
}
