//! Live events and the log writer.
//!
//! Log lines are numbered per deployment, written to the store in batches by one task, and
//! published on the [`Bus`] only after they are stored: a reader that subscribes first and
//! then reads the store misses nothing (it drops lines it saw twice by `seq`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::store::{LogLine, State, StepRun, Store, now_ms};

/// Something that happened to a deployment.
#[derive(Debug, Clone)]
pub enum Event {
    Log(LogLine),
    Step(StepRun),
    State {
        deployment_id: i64,
        state: State,
        description: Option<String>,
    },
}

impl Event {
    pub fn deployment_id(&self) -> i64 {
        match self {
            Event::Log(line) => line.deployment_id,
            Event::Step(step) => step.deployment_id,
            Event::State { deployment_id, .. } => *deployment_id,
        }
    }
}

/// Fan-out of [`Event`]s to pages, SSE streams and the CLI. Slow readers lose events (they are
/// told, and re-read the store); the engine never waits for them.
#[derive(Debug, Clone)]
pub struct Bus {
    sender: broadcast::Sender<Arc<Event>>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus {
            sender: broadcast::channel(4096).0,
        }
    }
}

impl Bus {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sender.subscribe()
    }

    pub fn publish(&self, event: Event) {
        let _ = self.sender.send(Arc::new(event));
    }
}

enum Command {
    Line(LogLine),
    Flush(oneshot::Sender<()>),
}

/// Writes log lines to the store in batches, then publishes them.
#[derive(Debug, Clone)]
pub struct Logs {
    sender: mpsc::UnboundedSender<Command>,
    store: Arc<dyn Store>,
}

impl Logs {
    /// Starts the writer task.
    pub fn start(store: Arc<dyn Store>, bus: Bus) -> Logs {
        let (sender, mut commands) = mpsc::unbounded_channel();
        let writer_store = store.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while commands.recv_many(&mut batch, 1024).await > 0 {
                let mut lines = Vec::new();
                let mut flushes = Vec::new();
                for command in batch.drain(..) {
                    match command {
                        Command::Line(line) => lines.push(line),
                        Command::Flush(done) => flushes.push(done),
                    }
                }
                if let Err(error) = writer_store.append_logs(&lines).await {
                    tracing::error!(
                        error = format!("{error:#}"),
                        lines = lines.len(),
                        "storing log lines"
                    );
                }
                for line in lines {
                    bus.publish(Event::Log(line));
                }
                for done in flushes {
                    let _ = done.send(());
                }
            }
        });
        Logs { sender, store }
    }

    /// A writer for one deployment, numbering after the lines it already has, that masks
    /// every value `redactor` knows.
    pub async fn open(
        &self,
        deployment_id: i64,
        redactor: Redactor,
    ) -> anyhow::Result<DeploymentLog> {
        let last = self.store.last_log_seq(deployment_id).await?;
        Ok(DeploymentLog {
            deployment_id,
            seq: Arc::new(AtomicI64::new(last)),
            sender: self.sender.clone(),
            redactor,
        })
    }
}

/// Masks secret values in text as `***`, the way CI systems mask theirs: whatever a script or
/// a container prints, a secret's value never reaches the store, a page or the API.
#[derive(Clone, Default)]
pub struct Redactor {
    matcher: Option<Arc<aho_corasick::AhoCorasick>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field(
                "patterns",
                &self.matcher.as_ref().map_or(0, |m| m.patterns_len()),
            )
            .finish()
    }
}

impl Redactor {
    /// Masks each of `values`; values shorter than 4 characters are left alone (masking
    /// `1` or `no` everywhere would garble the log without hiding anything).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Redactor {
        let values: Vec<&str> = values.into_iter().filter(|v| v.len() >= 4).collect();
        if values.is_empty() {
            return Redactor::default();
        }
        let matcher = aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(values)
            .expect("literal patterns always build");
        Redactor {
            matcher: Some(Arc::new(matcher)),
        }
    }

    /// Masks every secret the operator config gives `repo`.
    pub fn for_repo(config: &crate::config::Config, repo: &str) -> Redactor {
        use secrecy::ExposeSecret;
        match config.repo(repo) {
            Some(entry) => Redactor::new(entry.secrets.values().map(|s| s.expose_secret())),
            None => Redactor::default(),
        }
    }

    pub fn redact(&self, text: String) -> String {
        match &self.matcher {
            Some(matcher) if matcher.is_match(&text) => {
                let masks = vec!["***"; matcher.patterns_len()];
                matcher.replace_all(&text, &masks)
            }
            _ => text,
        }
    }
}

/// One deployment's log.
#[derive(Debug, Clone)]
pub struct DeploymentLog {
    deployment_id: i64,
    seq: Arc<AtomicI64>,
    sender: mpsc::UnboundedSender<Command>,
    redactor: Redactor,
}

impl DeploymentLog {
    pub fn line(
        &self,
        server: Option<&str>,
        step: Option<&str>,
        stream: &str,
        text: impl Into<String>,
    ) {
        let line = LogLine {
            deployment_id: self.deployment_id,
            seq: self.seq.fetch_add(1, Ordering::SeqCst) + 1,
            at: now_ms(),
            server: server.map(str::to_string),
            step: step.map(str::to_string),
            stream: stream.to_string(),
            line: self.redactor.redact(text.into()),
        };
        let _ = self.sender.send(Command::Line(line));
    }

    /// Dropship's own message about the deployment.
    pub fn note(&self, text: impl Into<String>) {
        self.line(None, None, "dropship", text);
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Waits until every line written so far is stored and published.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.sender.send(Command::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Redactor;

    #[test]
    fn secrets_are_masked_wherever_they_appear() {
        let redactor = Redactor::new(["hunter2", "s3cr3t-token", "no"]);
        assert_eq!(
            redactor.redact("password=hunter2 token=s3cr3t-token;hunter2".into()),
            "password=*** token=***;***"
        );
        assert_eq!(redactor.redact("no secret here".into()), "no secret here");
        assert_eq!(Redactor::default().redact("hunter2".into()), "hunter2");
    }
}
