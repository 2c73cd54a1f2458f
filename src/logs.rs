//! Live events and the log writer.
//!
//! Log lines are masked ([`Redactor`]), numbered per deployment in the order they reach the
//! writer, written to the store in batches by one task, and published on the [`Bus`] only after
//! they are stored: a reader that subscribes first and then reads the store misses nothing (it
//! drops lines it saw twice by `seq`).
//!
//! Bounded by construction: a command's output reaches the writer through an [`Output`] of
//! [`OUTPUT_QUEUE_LINES`] lines, charged against `[logs] max_step_bytes` (per step and server)
//! and `max_deployment_bytes`; the writer's queue admits command output only while fewer than
//! [`MAX_QUEUED_BYTES`] wait to be stored, so a slow store slows the reader, and through the
//! pipe the command, instead of filling memory.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};

use crate::config::{Config, LogsSection};
use crate::exec::{Allowance, OUTPUT_QUEUE_LINES, Output};
use crate::store::{LogLine, LogStream, State, StepRun, Store, now_ms};

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

/// Bytes of log lines waiting for the store before command output waits for room. Dropship's
/// own messages (a few per step) are never held back, but they count.
pub const MAX_QUEUED_BYTES: usize = 4 * 1024 * 1024;

/// What a queued line is charged beyond its text (its other fields).
const QUEUED_LINE_OVERHEAD: usize = 64;

enum Command {
    /// A line to number (from `seq`), store and publish; `permits` go back to the queue's
    /// room once it is stored.
    Line {
        line: LogLine,
        seq: Arc<AtomicI64>,
        permits: u32,
    },
    Flush(oneshot::Sender<()>),
}

/// Writes log lines to the store in batches, then publishes them.
///
/// The queue is an unbounded channel gated by bytes ([`MAX_QUEUED_BYTES`]): [`DeploymentLog::line`]
/// is called from synchronous code all over the engine and cannot wait, while command output
/// (the only unbounded source) waits for room before it is queued. One channel keeps every
/// line of a deployment in the order it was written.
#[derive(Debug, Clone)]
pub struct Logs {
    sender: mpsc::UnboundedSender<Command>,
    room: Arc<Semaphore>,
    store: Arc<dyn Store>,
    limits: LogsSection,
}

impl Logs {
    /// Starts the writer task.
    pub fn start(store: Arc<dyn Store>, bus: Bus, limits: LogsSection) -> Logs {
        let (sender, mut commands) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(MAX_QUEUED_BYTES));
        let writer_store = store.clone();
        let writer_room = room.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while commands.recv_many(&mut batch, 1024).await > 0 {
                let mut lines = Vec::new();
                let mut flushes = Vec::new();
                let mut permits = 0usize;
                for command in batch.drain(..) {
                    match command {
                        Command::Line {
                            mut line,
                            seq,
                            permits: held,
                        } => {
                            line.seq = seq.fetch_add(1, Ordering::SeqCst) + 1;
                            permits += held as usize;
                            lines.push(line);
                        }
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
                writer_room.add_permits(permits);
                for line in lines {
                    bus.publish(Event::Log(line));
                }
                for done in flushes {
                    let _ = done.send(());
                }
            }
        });
        Logs {
            sender,
            room,
            store,
            limits,
        }
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
            room: self.room.clone(),
            redactor,
            caps: Arc::new(Caps {
                step_bytes: self.limits.max_step_bytes,
                deployment: Allowance::new(self.limits.max_deployment_bytes),
                steps: Mutex::new(HashMap::new()),
            }),
        })
    }
}

/// The byte allowances of one deployment's command output.
#[derive(Debug)]
struct Caps {
    step_bytes: u64,
    deployment: Arc<Allowance>,
    /// Per (server, step).
    steps: Mutex<HashMap<(String, String), Arc<Allowance>>>,
}

/// One deployment's log.
#[derive(Debug, Clone)]
pub struct DeploymentLog {
    deployment_id: i64,
    seq: Arc<AtomicI64>,
    sender: mpsc::UnboundedSender<Command>,
    room: Arc<Semaphore>,
    redactor: Redactor,
    caps: Arc<Caps>,
}

impl DeploymentLog {
    /// Writes a line now, without waiting (for Dropship's own messages and other short,
    /// bounded text; command output goes through [`DeploymentLog::output`]).
    pub fn line(
        &self,
        server: Option<&str>,
        step: Option<&str>,
        stream: LogStream,
        text: impl Into<String>,
    ) {
        let line = self.masked(server, step, stream, text.into());
        let cost = cost(&line);
        let permits = match self.room.try_acquire_many(cost) {
            Ok(permit) => {
                permit.forget();
                cost
            }
            Err(_) => 0,
        };
        self.queue(line, permits);
    }

    /// A channel for a command's output on `server` in `step`, and the task that writes what
    /// arrives to this log (await it after the command, so every line is queued). The output
    /// is charged against the step's cap on that server and the deployment's cap.
    pub fn output(&self, server: &str, step: &str) -> (Output, tokio::task::JoinHandle<()>) {
        let allowance = self
            .caps
            .steps
            .lock()
            .expect("not poisoned")
            .entry((server.to_string(), step.to_string()))
            .or_insert_with(|| Allowance::new(self.caps.step_bytes))
            .clone();
        let (output, mut lines) =
            Output::capped(OUTPUT_QUEUE_LINES, allowance, self.caps.deployment.clone());
        let log = self.clone();
        let server = server.to_string();
        let step = step.to_string();
        let task = tokio::spawn(async move {
            while let Some((stream, text)) = lines.recv().await {
                let line = log.masked(Some(&server), Some(&step), stream.into(), text);
                let cost = cost(&line);
                // Wait for room: this is what slows a command down to the store's pace.
                if let Ok(permit) = log.room.clone().acquire_many_owned(cost).await {
                    permit.forget();
                }
                log.queue(line, cost);
            }
        });
        (output, task)
    }

    fn masked(
        &self,
        server: Option<&str>,
        step: Option<&str>,
        stream: LogStream,
        text: String,
    ) -> LogLine {
        LogLine {
            deployment_id: self.deployment_id,
            // Numbered by the writer, in the order lines reach it.
            seq: 0,
            at: now_ms(),
            server: server.map(str::to_string),
            step: step.map(str::to_string),
            stream,
            line: self.redactor.redact(text),
        }
    }

    fn queue(&self, line: LogLine, permits: u32) {
        let _ = self.sender.send(Command::Line {
            line,
            seq: self.seq.clone(),
            permits,
        });
    }

    /// Dropship's own message about the deployment.
    /// Whether nothing was written to this log yet.
    pub fn is_empty(&self) -> bool {
        self.seq.load(Ordering::SeqCst) == 0
    }

    pub fn note(&self, text: impl Into<String>) {
        self.line(None, None, LogStream::Dropship, text);
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

/// What a line is charged in the writer's queue.
fn cost(line: &LogLine) -> u32 {
    (line.line.len() + QUEUED_LINE_OVERHEAD).min(MAX_QUEUED_BYTES) as u32
}

/// Masks secret values in text as `***`, the way CI systems mask theirs: whatever a script, a
/// container or Dropship itself prints, a secret's value never reaches the store, a page, the
/// API, GitHub or Dropship's own log.
///
/// Each value is looked for as written and as it is commonly re-encoded: each line of a
/// multi-line value (output arrives line by line), its base64 (standard and URL-safe, padded or
/// not, alone or inside a longer base64 text, wrapped at 64 or 76 columns), its
/// percent-encodings and its JSON string form.
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

/// Values shorter than this are not masked (masking `1` or `no` everywhere would garble the
/// log without hiding anything).
const MIN_SECRET_CHARS: usize = 4;
/// A line of a multi-line value, or an encoded fragment, shorter than this is not masked on its
/// own (a PEM key's lines are 64 characters).
const MIN_FRAGMENT_CHARS: usize = 8;

impl Redactor {
    /// Masks each of `values` and their encodings; values shorter than `MIN_SECRET_CHARS` (4)
    /// are left alone.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Redactor {
        let mut needles: Vec<String> = values
            .into_iter()
            .filter(|v| v.len() >= MIN_SECRET_CHARS)
            .flat_map(needles)
            .collect();
        needles.sort_unstable();
        needles.dedup();
        if needles.is_empty() {
            return Redactor::default();
        }
        let matcher = aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(&needles)
            .expect("literal patterns always build");
        Redactor {
            matcher: Some(Arc::new(matcher)),
        }
    }

    /// Built from `operator` (already read) and the secrets of `entry`.
    fn for_entry(entry: Option<&crate::config::RepoEntry>, operator: &[String]) -> Redactor {
        use secrecy::ExposeSecret;
        let own = entry
            .into_iter()
            .flat_map(|entry| entry.secrets.values().map(|s| s.expose_secret()));
        Redactor::new(own.chain(operator.iter().map(String::as_str)))
    }

    pub fn redact(&self, text: String) -> String {
        match self.redact_str(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(masked) => masked,
        }
    }

    pub fn redact_str<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match &self.matcher {
            Some(matcher) if matcher.is_match(text) => {
                let masks = vec!["***"; matcher.patterns_len()];
                Cow::Owned(matcher.replace_all(text, &masks))
            }
            _ => Cow::Borrowed(text),
        }
    }
}

/// Calls `f` on every string in `value`, in arrays and objects at any depth (object keys are
/// left as they are).
pub(crate) fn each_string_mut(value: &mut serde_json::Value, f: &mut impl FnMut(&mut String)) {
    match value {
        serde_json::Value::String(text) => f(text),
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| each_string_mut(v, f)),
        serde_json::Value::Object(fields) => {
            fields.values_mut().for_each(|v| each_string_mut(v, f))
        }
        _ => {}
    }
}

/// The operator's own credentials: registry passwords, the GitHub token, the GitHub App's
/// private key (read from its file, if it can be) and the webhook secrets.
pub fn operator_secrets(config: &Config) -> Vec<String> {
    use secrecy::ExposeSecret;
    let mut values: Vec<String> = config
        .registries
        .iter()
        .map(|r| r.password.expose_secret().to_string())
        .collect();
    values.extend(
        config
            .github
            .token
            .iter()
            .chain(&config.github.webhook_secrets)
            .map(|s| s.expose_secret().to_string()),
    );
    if let Some(app) = &config.github.app {
        if let Ok(key) = std::fs::read_to_string(&app.private_key_file) {
            values.push(key);
        }
    }
    values
}

/// Every repository's [`Redactor`], and the one for Dropship's own log, built once at start:
/// building one reads the GitHub App's key file and computes every masked form of every
/// secret, which state changes, step records, container log followers and the outbox would
/// otherwise redo each time.
#[derive(Debug, Clone)]
pub struct Redactors {
    config: Arc<Config>,
    /// One per `[[repos]]` entry, in the config's order (a repository gets its first match).
    by_entry: Arc<Vec<Redactor>>,
    /// For a repository no entry matches: the operator's credentials only.
    unmatched: Redactor,
    /// Every secret in the config: every repository's and the operator's.
    all: Redactor,
}

impl Redactors {
    pub fn new(config: Arc<Config>) -> Redactors {
        use secrecy::ExposeSecret;
        let operator = operator_secrets(&config);
        let by_entry = config
            .repos
            .iter()
            .map(|entry| Redactor::for_entry(Some(entry), &operator))
            .collect();
        let every_repo = config
            .repos
            .iter()
            .flat_map(|entry| entry.secrets.values().map(|s| s.expose_secret()));
        let all = Redactor::new(every_repo.chain(operator.iter().map(String::as_str)));
        Redactors {
            unmatched: Redactor::for_entry(None, &operator),
            by_entry: Arc::new(by_entry),
            all,
            config,
        }
    }

    /// What masks `repo`'s output: its own secrets and the operator's credentials ([`operator_secrets`]).
    /// Another repository's values are not masked: masking them would let this one test
    /// guesses.
    pub fn for_repo(&self, repo: &str) -> &Redactor {
        self.config
            .repo_index(repo)
            .and_then(|i| self.by_entry.get(i))
            .unwrap_or(&self.unmatched)
    }

    /// What masks Dropship's own log, which no repository reads: every secret in the config,
    /// every repository's and the operator's ([`mask_tracing`] takes it).
    pub fn all(&self) -> &Redactor {
        &self.all
    }
}

/// Every form of `value` to look for.
fn needles(value: &str) -> Vec<String> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut out = vec![value.to_string()];
    let trimmed = value.trim();
    if trimmed.len() >= MIN_SECRET_CHARS {
        out.push(trimmed.to_string());
    }
    // Output arrives line by line: each line of a multi-line value is a needle of its own.
    if trimmed.contains('\n') {
        out.extend(
            trimmed
                .lines()
                .map(str::trim)
                .filter(|line| line.len() >= MIN_FRAGMENT_CHARS && !line.starts_with("-----"))
                .map(str::to_string),
        );
    }
    // Encoded as it is, and with the newline `echo "$SECRET" | base64` adds (or without the
    // one a file ends with).
    let mut forms = vec![value.to_string()];
    if trimmed != value {
        forms.push(trimmed.to_string());
    }
    forms.push(format!("{trimmed}\n"));
    for form in &forms {
        let bytes = form.as_bytes();
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            out.push(engine.encode(bytes));
        }
        // Inside a longer base64 text (`user:password`, a JSON file), the value's bytes start
        // at any offset modulo 3: what only they determine.
        for shift in 0..3usize {
            let mut shifted = vec![0u8; shift];
            shifted.extend_from_slice(bytes);
            for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                let encoded = engine.encode(&shifted);
                let skip = [0, 2, 3][shift];
                let end = if shifted.len() % 3 == 0 {
                    encoded.len()
                } else {
                    encoded.len() - 1
                };
                if let Some(core) = encoded.get(skip..end) {
                    if core.len() >= MIN_FRAGMENT_CHARS {
                        out.push(core.to_string());
                    }
                }
            }
        }
        // `base64` wraps at 76 columns, `openssl base64` at 64.
        let encoded = STANDARD.encode(bytes);
        for width in [64, 76] {
            if encoded.len() > width {
                out.extend(
                    encoded
                        .as_bytes()
                        .chunks(width)
                        .filter(|chunk| chunk.len() >= MIN_FRAGMENT_CHARS)
                        .map(|chunk| String::from_utf8_lossy(chunk).into_owned()),
                );
            }
        }
    }
    out.extend(percent_encodings(trimmed));
    if let Ok(json) = serde_json::to_string(trimmed) {
        out.push(json[1..json.len() - 1].to_string());
    }
    out.retain(|needle| needle.len() >= MIN_SECRET_CHARS);
    out
}

/// `value` percent-encoded as URL components and forms commonly are: everything but letters
/// and digits, or all but RFC 3986's unreserved characters, or JavaScript's
/// `encodeURIComponent`, or a form (`+` for space); with upper- and lowercase hex.
fn percent_encodings(value: &str) -> Vec<String> {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    const COMPONENT: &AsciiSet = &UNRESERVED
        .remove(b'!')
        .remove(b'*')
        .remove(b'\'')
        .remove(b'(')
        .remove(b')');
    let mut out = Vec::new();
    for set in [NON_ALPHANUMERIC, UNRESERVED, COMPONENT] {
        let encoded = utf8_percent_encode(value, set).to_string();
        if encoded != value {
            out.push(encoded.replace("%20", "+"));
            out.push(lowercase_escapes(&encoded));
            out.push(encoded);
        }
    }
    out
}

/// `%2F` → `%2f`.
fn lowercase_escapes(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut chars = encoded.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '%' {
            out.extend(chars.by_ref().take(2).map(|h| h.to_ascii_lowercase()));
        }
    }
    out
}

/// Masks what Dropship's own log (tracing, on standard error) prints, once [`mask_tracing`]
/// has been told the secrets.
static TRACING_MASK: arc_swap::ArcSwapOption<Redactor> = arc_swap::ArcSwapOption::const_empty();

/// Masks `redactor`'s values in every tracing event written through [`MaskedWriter`] from now
/// on ([`Redactors::all`], once the config is loaded).
pub fn mask_tracing(redactor: Redactor) {
    TRACING_MASK.store(Some(Arc::new(redactor)));
}

/// A tracing `MakeWriter` that masks each event before the inner writer sees it: the
/// subscriber's writer, so no event (a span field, an error's text) can bypass it.
#[derive(Debug, Clone, Copy)]
pub struct MaskedWriter<M> {
    inner: M,
    mask: &'static arc_swap::ArcSwapOption<Redactor>,
}

impl MaskedWriter<fn() -> std::io::Stderr> {
    /// Standard error, masked with what [`mask_tracing`] set.
    pub fn stderr() -> Self {
        MaskedWriter {
            inner: std::io::stderr,
            mask: &TRACING_MASK,
        }
    }
}

impl<'a, M: tracing_subscriber::fmt::MakeWriter<'a>> tracing_subscriber::fmt::MakeWriter<'a>
    for MaskedWriter<M>
{
    type Writer = MaskedEvent<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        MaskedEvent {
            inner: self.inner.make_writer(),
            buffer: Vec::new(),
            mask: self.mask,
        }
    }
}

/// One event's text, masked and written when it is complete (dropped).
#[derive(Debug)]
pub struct MaskedEvent<W: std::io::Write> {
    inner: W,
    buffer: Vec<u8>,
    mask: &'static arc_swap::ArcSwapOption<Redactor>,
}

impl<W: std::io::Write> std::io::Write for MaskedEvent<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<W: std::io::Write> Drop for MaskedEvent<W> {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buffer);
        let masked = match &*self.mask.load() {
            Some(redactor) => redactor.redact_str(&text).into_owned(),
            None => text.into_owned(),
        };
        let _ = self.inner.write_all(masked.as_bytes());
        let _ = self.inner.flush();
    }
}

/// A command's output stream, as its log line records it.
impl From<crate::exec::Stream> for LogStream {
    fn from(stream: crate::exec::Stream) -> LogStream {
        match stream {
            crate::exec::Stream::Stdout => LogStream::Stdout,
            crate::exec::Stream::Stderr => LogStream::Stderr,
            crate::exec::Stream::Dropship => LogStream::Dropship,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

    use super::*;

    /// A secret whose base64 has `+` and `/` in it (so the URL-safe forms differ).
    const SECRET: &str = "s3cr3t?>>?~~ü";

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

    #[test]
    fn base64_forms_are_masked() {
        let redactor = Redactor::new([SECRET]);
        let standard = STANDARD.encode(SECRET);
        assert!(
            standard.contains('+') || standard.contains('/'),
            "{standard}"
        );
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            let encoded = engine.encode(SECRET);
            assert_eq!(
                redactor.redact(format!("x {encoded} y")),
                "x *** y",
                "{encoded}"
            );
            // `echo "$SECRET" | base64`
            let echoed = engine.encode(format!("{SECRET}\n"));
            assert_eq!(redactor.redact(echoed.clone()), "***", "{echoed}");
        }
    }

    #[test]
    fn base64_of_a_longer_text_holding_the_secret_is_masked() {
        let redactor = Redactor::new([SECRET]);
        for user in ["", "a", "ab", "abc", "deploy"] {
            for engine in [&STANDARD, &URL_SAFE_NO_PAD] {
                let auth = engine.encode(format!("{user}:{SECRET}@registry"));
                let masked = redactor.redact(auth.clone());
                assert!(masked.contains("***"), "{user}: {auth} → {masked}");
                // What is left is only what the neighbouring bytes share with the secret.
                assert!(masked.len() < auth.len() - 8, "{user}: {auth} → {masked}");
            }
        }
    }

    /// A PEM private key's shape: armour lines and 64-column base64 lines.
    fn pem() -> String {
        let body: Vec<u8> = (0..600u32).map(|i| (i * 7919 % 251) as u8).collect();
        let encoded = STANDARD.encode(body);
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in encoded.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        pem
    }

    #[test]
    fn a_multi_line_secret_is_masked_line_by_line() {
        let key = pem();
        let redactor = Redactor::new([key.as_str()]);
        for line in key.lines() {
            let masked = redactor.redact(format!("  {line}"));
            if line.starts_with("-----") {
                assert_eq!(masked, format!("  {line}"), "armour is not secret");
            } else {
                assert_eq!(masked, "  ***", "{line}");
            }
        }
        // All of it at once (a status description, a JSON string).
        assert_eq!(redactor.redact(key.clone()), "***");
        let json = serde_json::to_string(&key).unwrap();
        assert!(!redactor.redact(json).contains("MII"), "no line survives");
    }

    #[test]
    fn a_multi_line_secret_piped_through_base64_is_masked_line_by_line() {
        let key = pem();
        let redactor = Redactor::new([key.as_str()]);
        let encoded = STANDARD.encode(&key);
        // `base64` wraps at 76 columns, `openssl base64` at 64.
        for width in [64, 76] {
            let chunks: Vec<&[u8]> = encoded.as_bytes().chunks(width).collect();
            for chunk in &chunks[..chunks.len() - 1] {
                let line = std::str::from_utf8(chunk).unwrap();
                assert_eq!(redactor.redact(line.to_string()), "***", "{width}: {line}");
            }
        }
    }

    #[test]
    fn percent_encoded_forms_are_masked() {
        let secret = "p@ss w/rd&key=1!(x)";
        let redactor = Redactor::new([secret]);
        for encoded in [
            // Everything but letters and digits (Rust's NON_ALPHANUMERIC, curl --data-urlencode).
            "p%40ss%20w%2Frd%26key%3D1%21%28x%29",
            // Python's quote(safe=''): RFC 3986 unreserved kept.
            "p%40ss%20w%2Frd%26key%3D1%21%28x%29",
            // JavaScript's encodeURIComponent.
            "p%40ss%20w%2Frd%26key%3D1!(x)",
            // A form body.
            "p%40ss+w%2Frd%26key%3D1%21%28x%29",
            // Lowercase hex.
            "p%40ss%20w%2frd%26key%3d1%21%28x%29",
        ] {
            assert_eq!(
                redactor.redact(format!("https://u:{encoded}@h/")),
                "https://u:***@h/",
                "{encoded}"
            );
        }
    }

    #[test]
    fn a_json_escaped_secret_is_masked() {
        let secret = r#"quote"and\slash"#;
        let redactor = Redactor::new([secret]);
        let json = serde_json::json!({ "password": secret }).to_string();
        assert_eq!(redactor.redact(json), r#"{"password":"***"}"#);
    }

    #[test]
    fn json_values_are_masked_in_every_string() {
        let redactor = Redactor::new(["hunter22"]);
        let mut body = serde_json::json!({
            "output": { "summary": "said hunter22", "lines": ["a", "hunter22"] },
            "hunter22": 1
        });
        each_string_mut(&mut body, &mut |text| {
            if let Cow::Owned(masked) = redactor.redact_str(text) {
                *text = masked;
            }
        });
        assert_eq!(
            body,
            serde_json::json!({
                "output": { "summary": "said ***", "lines": ["a", "***"] },
                "hunter22": 1
            })
        );
    }

    const OPERATOR_CONFIG: &str = r#"
[github]
token = "ghp_operator_token_1"
webhook_secrets = ["webhook-secret-1"]

[[registries]]
server = "ghcr.io"
username = "bot"
password = "registry-password-1"

[[repos]]
name = "acme/shop"
secrets = { DB = "shop-db-password" }

[[repos]]
name = "acme/blog"
secrets = { DB = "blog-db-password" }
"#;

    #[test]
    fn a_repository_redactor_masks_its_secrets_and_the_operator_credentials_only() {
        let config = Config::from_toml(OPERATOR_CONFIG).unwrap();
        let redactors = Redactors::new(Arc::new(config));
        let shop = redactors.for_repo("acme/shop");
        let text = "shop-db-password blog-db-password ghp_operator_token_1 webhook-secret-1 registry-password-1";
        assert_eq!(
            shop.redact(text.into()),
            "*** blog-db-password *** *** ***",
            "another repository's values are not masked: masking them would let this one test guesses"
        );
        let everything = redactors.all();
        assert_eq!(everything.redact(text.into()), "*** *** *** *** ***");
        // An unknown repository's masks the operator's credentials only.
        assert_eq!(
            redactors.for_repo("acme/unknown").redact(text.into()),
            "shop-db-password blog-db-password *** *** ***"
        );
    }

    #[test]
    fn a_github_app_key_is_masked_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("app.pem");
        let key = pem();
        std::fs::write(&key_file, &key).unwrap();
        let config = Config::from_toml(&format!(
            "[github.app]\napp_id = 1\nprivate_key_file = \"{}\"\n",
            key_file.display()
        ))
        .unwrap();
        let redactors = Redactors::new(Arc::new(config));
        let redactor = redactors.for_repo("acme/shop");
        let line = key.lines().nth(3).unwrap();
        assert_eq!(redactor.redact(line.to_string()), "***");
        assert_eq!(redactors.all().redact(line.to_string()), "***");
    }

    /// Captures what a tracing subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn tracing_events_are_masked_before_they_are_written() {
        static MASK: arc_swap::ArcSwapOption<Redactor> = arc_swap::ArcSwapOption::const_empty();
        MASK.store(Some(Arc::new(Redactor::new(["hunter22", &pem()]))));
        let captured = Captured::default();
        let sink = captured.clone();
        let writer = MaskedWriter {
            inner: move || sink.clone(),
            mask: &MASK,
        };
        for json in [false, true] {
            let builder = tracing_subscriber::fmt().with_writer(writer.clone());
            let key = pem();
            let emit = || {
                let span = tracing::info_span!("step", token = "hunter22");
                let _entered = span.enter();
                tracing::error!(error = "bad password hunter22", key = %key, "it said hunter22");
            };
            if json {
                tracing::subscriber::with_default(builder.json().finish(), emit);
            } else {
                tracing::subscriber::with_default(builder.finish(), emit);
            }
        }
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("it said ***"), "{text}");
        assert!(!text.contains("hunter22"), "{text}");
        let key = pem();
        let line = key.lines().nth(2).unwrap();
        assert!(!text.contains(line), "{text}");
    }

    async fn stored_log(caps: LogsSection) -> (Arc<dyn Store>, DeploymentLog, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            crate::store::Sqlite::open(&dir.path().join("dropship.db"))
                .await
                .unwrap(),
        );
        let logs = Logs::start(store.clone(), Bus::default(), caps);
        let log = logs.open(1, Redactor::new(["hunter22"])).await.unwrap();
        (store, log, dir)
    }

    #[tokio::test]
    async fn command_output_is_masked_capped_and_numbered_in_order_with_notes() {
        let (store, log, _dir) = stored_log(LogsSection {
            max_step_bytes: 250,
            max_deployment_bytes: 1000,
        })
        .await;
        log.note("starting");
        let (output, task) = log.output("web-1", "build");
        assert!(
            output
                .send((crate::exec::Stream::Stdout, "pw hunter22".into()))
                .await
        );
        assert!(
            output
                .send((crate::exec::Stream::Stderr, "0123456789".into()))
                .await
        );
        assert!(
            !output
                .send((crate::exec::Stream::Stdout, "0123456789".into()))
                .await
        );
        assert!(
            !output
                .send((crate::exec::Stream::Stdout, "more".into()))
                .await
        );
        drop(output);
        task.await.unwrap();
        log.line(
            Some("web-1"),
            Some("build"),
            LogStream::Dropship,
            "✘ build failed",
        );
        log.flush().await;
        let lines: Vec<(i64, String, String)> = store
            .logs(1, 0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|l| (l.seq, l.stream.to_string(), l.line))
            .collect();
        assert_eq!(
            lines,
            [
                (1, "dropship".into(), "starting".into()),
                (2, "stdout".into(), "pw ***".into()),
                (3, "stderr".into(), "0123456789".into()),
                (
                    4,
                    "dropship".into(),
                    "output cut: this step's output on this server passed 250 bytes; the rest is discarded".into()
                ),
                (5, "dropship".into(), "✘ build failed".into()),
            ]
        );
    }

    #[tokio::test]
    async fn a_step_run_twice_on_a_server_shares_its_cap_and_other_servers_have_their_own() {
        let (store, log, _dir) = stored_log(LogsSection {
            max_step_bytes: 150,
            max_deployment_bytes: 1000,
        })
        .await;
        for server in ["web-1", "web-1", "web-2"] {
            let (output, task) = log.output(server, "pull");
            output
                .send((crate::exec::Stream::Stdout, "0123456789".into()))
                .await;
            drop(output);
            task.await.unwrap();
        }
        log.flush().await;
        let lines = store.logs(1, 0, 100).await.unwrap();
        let web1 = lines
            .iter()
            .filter(|l| l.server.as_deref() == Some("web-1"))
            .count();
        let web2 = lines
            .iter()
            .filter(|l| l.server.as_deref() == Some("web-2"))
            .count();
        assert_eq!((web1, web2), (2, 1));
    }
}
