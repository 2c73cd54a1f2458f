//! Running a step's script on a server: over SSH ([`Ssh`]) or on this machine ([`Local`]).
//!
//! Both feed the script through the command's standard input, never its arguments, so that
//! secrets exported by the script do not show in the server's process list. The script runs
//! under `sh -e` inside `timeout`, in a process group of its own (`timeout`'s, or `setsid`'s
//! where there is no `timeout`), and every process
//! it starts carries `DROPSHIP_JOB=<group>` in its environment. When a job is stopped (cancel,
//! a timeout, shutdown), or outlives its deadline, or was left behind by a Dropship that
//! crashed, [`Executor::kill`] finds its processes by that mark over a separate channel and
//! kills their process groups: TERM, then KILL after [`KILL_GRACE`].

mod local;
mod ssh;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

pub use local::Local;
pub use ssh::{Forward, Lease, Remote, Ssh};

use crate::config::Config;

/// Grace given to a job's processes between TERM and KILL (by `timeout`, and by
/// [`Executor::kill`]).
pub const KILL_GRACE: Duration = Duration::from_secs(10);
/// The longest [`Executor::kill`] may take, its grace included.
pub const KILL_DEADLINE: Duration = Duration::from_secs(30);
/// A longer line is cut (and says so), to keep one runaway line from filling memory.
const MAX_LINE_BYTES: usize = 64 * 1024;
/// What each line counts against the log caps beyond its text: what is stored with it (its
/// number, time, server, step and stream, and SQLite's own bookkeeping), so that the caps bound
/// the database, not just the text. Measured: a 200-byte line takes about 275 bytes.
pub const LINE_OVERHEAD: u64 = 96;
/// Lines an [`Output`] channel holds before the command's reader waits for the log writer
/// (at most 64 × 64 KiB = 4 MiB per running command).
pub const OUTPUT_QUEUE_LINES: usize = 64;

/// What to run.
#[derive(Clone)]
pub struct Job {
    pub script: String,
    pub env: Vec<(String, String)>,
    pub secrets: Vec<(String, SecretString)>,
    pub working_dir: Option<String>,
    pub timeout: Duration,
    /// What its processes are known by on the server ([`job_group`]).
    pub group: String,
    /// Cancelled when the job must stop before it ends: its processes are then killed and it
    /// ends [`Exit::Stopped`].
    pub stop: tokio_util::sync::CancellationToken,
}

/// The group name of one step's job on one server of one deployment of Dropship `instance`
/// (`Keys::instance`): the mark its processes carry (`DROPSHIP_JOB`). Only letters, digits,
/// `-`, `_` and `.`, so it is the same word in any shell; the same inputs always give the same
/// name, so a Dropship that restarts knows the groups of the steps it was running.
pub fn job_group(instance: &str, deployment_id: i64, step_index: usize, server: &str) -> String {
    let server: String = server
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let instance: String = instance
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("{instance}-d{deployment_id}-s{step_index}-{server}")
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("script", &self.script)
            .field("env", &self.env)
            .field(
                "secrets",
                &self
                    .secrets
                    .iter()
                    .map(|(name, _)| name)
                    .collect::<Vec<_>>(),
            )
            .field("working_dir", &self.working_dir)
            .field("timeout", &self.timeout)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    /// Dropship's own note about the output (that it was cut).
    Dropship,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Dropship => "dropship",
        }
    }
}

/// How the command ended. Any of these is an outcome to record, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    /// Killed by a signal (no exit code).
    Signal,
    TimedOut,
    /// Stopped through its job's `stop` token; its processes were killed.
    Stopped,
}

/// Dropship could not run the command at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    #[error("{server}: host key verification failed: {detail}")]
    HostKey { server: String, detail: String },
    #[error("{server}: cannot connect: {detail}")]
    Connect { server: String, detail: String },
    #[error("{server}: {detail}")]
    Io { server: String, detail: String },
}

/// A byte allowance shared by every [`Output`] that charges it: one per step and server, one
/// per deployment.
#[derive(Debug)]
pub struct Allowance {
    limit: u64,
    left: AtomicU64,
    /// Set once an [`Output`] charging this as its step allowance was cut (and the note about
    /// it sent), so the step's later output on that server is refused at once and the note is
    /// not repeated. Only a step's allowance is ever marked: when the deployment's runs out,
    /// each step is cut, and told, on its own.
    cut: AtomicBool,
}

impl Allowance {
    pub fn new(limit: u64) -> Arc<Allowance> {
        Arc::new(Allowance {
            limit,
            left: AtomicU64::new(limit),
            cut: AtomicBool::new(false),
        })
    }

    /// No limit.
    #[cfg(test)]
    pub fn unlimited() -> Arc<Allowance> {
        Allowance::new(u64::MAX)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Takes `bytes` if that many are left.
    fn take(&self, bytes: u64) -> bool {
        self.left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(bytes)
            })
            .is_ok()
    }
}

/// Where a command's output goes, line by line: a bounded channel (when the log writer is
/// behind, the reader waits and so, through the pipe, does the command), charged against the
/// step's and the deployment's byte allowances. Past either, the line saying so is sent once
/// (stream [`Stream::Dropship`]) and everything after is refused: the reader then drains the
/// command's output without keeping it, so the command runs to its own end.
#[derive(Debug, Clone)]
pub struct Output {
    sender: mpsc::Sender<(Stream, String)>,
    step: Arc<Allowance>,
    deployment: Arc<Allowance>,
}

impl Output {
    /// An output without caps, and its receiving end.
    #[cfg(test)]
    pub fn channel(capacity: usize) -> (Output, mpsc::Receiver<(Stream, String)>) {
        Output::capped(capacity, Allowance::unlimited(), Allowance::unlimited())
    }

    /// An output charged to `step` and `deployment`, and its receiving end.
    pub fn capped(
        capacity: usize,
        step: Arc<Allowance>,
        deployment: Arc<Allowance>,
    ) -> (Output, mpsc::Receiver<(Stream, String)>) {
        let (sender, receiver) = mpsc::channel(capacity);
        (
            Output {
                sender,
                step,
                deployment,
            },
            receiver,
        )
    }

    /// Sends one line, waiting for room. False when the line was not kept: the output was cut,
    /// or nobody reads it any more; the caller should then discard the rest.
    pub async fn send(&self, (stream, text): (Stream, String)) -> bool {
        if self.step.cut.load(Ordering::SeqCst) {
            return false;
        }
        let bytes = text.len() as u64 + LINE_OVERHEAD;
        let over = if !self.step.take(bytes) {
            Some(format!(
                "output cut: this step's output on this server passed {}; the rest is discarded",
                human_bytes(self.step.limit())
            ))
        } else if !self.deployment.take(bytes) {
            Some(format!(
                "output cut: this deployment's output reached {}; the rest of this step's is discarded",
                human_bytes(self.deployment.limit())
            ))
        } else {
            None
        };
        match over {
            None => self.sender.send((stream, text)).await.is_ok(),
            Some(note) => {
                if !self.step.cut.swap(true, Ordering::SeqCst) {
                    let _ = self.sender.send((Stream::Dropship, note)).await;
                }
                false
            }
        }
    }
}

/// `16 MiB`, `1.5 KiB`, `100 bytes`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            let value = bytes as f64 / size as f64;
            return if bytes % size == 0 {
                format!("{} {unit}", bytes / size)
            } else {
                format!("{value:.1} {unit}")
            };
        }
    }
    format!("{bytes} bytes")
}

/// Runs commands on one server.
#[async_trait]
pub trait Executor: Send + Sync + fmt::Debug {
    /// Runs `job`, sending its output line by line, until it exits, times out or is stopped
    /// (its processes then killed).
    async fn run(&self, job: &Job, output: Output) -> Result<Exit, ExecError>;
    /// Kills every process of job groups `groups` on the server, over a channel of its own:
    /// TERM to their process groups, then KILL to what is left after [`KILL_GRACE`]. Returns
    /// how many processes carried a mark.
    async fn kill(&self, groups: &[String]) -> Result<u32, ExecError>;
    /// Connects (if needed) and describes the server (`Linux 6.1.0`).
    async fn check(&self) -> Result<String, ExecError>;
    /// A human description of how the host key is checked.
    fn host_key_status(&self) -> String;
}

/// Most master connections [`Fleet::connect_all`] opens at once (sshd's default `MaxStartups`
/// begins refusing at 10 unauthenticated connections per server, but these are to different
/// servers; the limit keeps Dropship's own burst of `ssh` processes bounded).
pub const CONNECT_AT_ONCE: usize = 64;

/// The executors of every configured server, by name.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    /// Shared: the runner (and so the fleet) is cloned into every deployment task.
    executors: Arc<HashMap<String, Arc<dyn Executor>>>,
    /// The SSH connections among them, which also carry the Docker engines' sockets.
    ssh: Arc<HashMap<String, Arc<Ssh>>>,
}

impl Fleet {
    pub fn from_config(
        config: &Config,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> anyhow::Result<Fleet> {
        let mut executors: HashMap<String, Arc<dyn Executor>> = HashMap::new();
        let mut connections = HashMap::new();
        for server in &config.servers {
            let executor: Arc<dyn Executor> = if server.is_local() {
                Arc::new(Local::new(&server.name))
            } else {
                let ssh = Ssh::new(
                    server,
                    &config.server.data_dir,
                    &config.ssh,
                    metrics.clone(),
                )?;
                connections.insert(server.name.clone(), ssh.clone());
                ssh
            };
            executors.insert(server.name.clone(), executor);
        }
        Ok(Fleet {
            executors: Arc::new(executors),
            ssh: Arc::new(connections),
        })
    }

    /// Opens the master connection of every SSH server, [`CONNECT_AT_ONCE`] at a time, and
    /// returns those that failed, with why (each is tried again by its next step).
    pub async fn connect_all(&self) -> Vec<(String, ExecError)> {
        use futures::StreamExt;
        futures::stream::iter(self.ssh.values().cloned())
            .map(|ssh| async move {
                let connected = ssh.connected().await;
                (ssh.name().to_string(), connected)
            })
            .buffer_unordered(CONNECT_AT_ONCE)
            .filter_map(|(name, connected)| async move { connected.err().map(|e| (name, e)) })
            .collect()
            .await
    }

    /// The SSH connection of an SSH server.
    pub fn ssh(&self, server: &str) -> Option<Arc<Ssh>> {
        self.ssh.get(server).cloned()
    }

    pub fn get(&self, server: &str) -> Option<Arc<dyn Executor>> {
        self.executors.get(server).cloned()
    }
}

/// The command line (for `sh -c`) and the standard input that run `job`.
pub(crate) fn render(job: &Job) -> (String, String) {
    let mut stdin = String::from("unset DROPSHIP_SCRIPT\n");
    for (name, value) in &job.env {
        stdin.push_str(&format!("export {name}={}\n", shell_quote(value)));
    }
    for (name, value) in &job.secrets {
        stdin.push_str(&format!(
            "export {name}={}\n",
            shell_quote(value.expose_secret())
        ));
    }
    if let Some(dir) = &job.working_dir {
        stdin.push_str(&format!("cd -- {} || exit 1\n", shell_quote(dir)));
    }
    stdin.push_str(&job.script);
    stdin.push('\n');
    let seconds = job.timeout.as_secs().max(1);
    let kill_after = KILL_GRACE.as_secs();
    // A process group of its own: `timeout` makes one (it is its group's leader, so it can
    // signal the whole group); without `timeout`, `setsid -w` does (a new session, waited for,
    // so the exit code is the script's; tried, not looked up, as BusyBox's has no `-w`).
    // Without either, the mark alone still lets `kill` find the processes.
    let command = format!(
        "DROPSHIP_SCRIPT=$(cat) && export DROPSHIP_SCRIPT && DROPSHIP_JOB={group} && export DROPSHIP_JOB && \
         if command -v timeout >/dev/null 2>&1; then set -- timeout -k {kill_after} {seconds}; \
         elif setsid -w true >/dev/null 2>&1; then set -- setsid -w; else set --; fi && \
         exec \"$@\" sh -ec 'eval \"$DROPSHIP_SCRIPT\"' </dev/null",
        group = shell_quote(&job.group),
    );
    (command, stdin)
}

/// The script that kills job groups `groups` (see [`Executor::kill`]): it prints how many
/// processes carried one of their marks. Linux `/proc`, one `grep` over every process's
/// environment per look; each process group signalled once, then each marked process (one that
/// left its group); every value quoted.
pub(crate) fn kill_script(groups: &[String]) -> String {
    let patterns: Vec<String> = groups
        .iter()
        .map(|group| format!("-e {}", shell_quote(&format!("DROPSHIP_JOB={group}"))))
        .collect();
    let patterns = patterns.join(" ");
    let grace_steps = KILL_GRACE.as_millis() / 250;
    format!(
        "marked() {{ grep -lzxF {patterns} /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3; }}\n\
         count=$(marked | grep -c .)\n\
         signal() {{ pids=$(marked); \
         for pg in $(for pid in $pids; do sed 's/.*) //' \"/proc/$pid/stat\" 2>/dev/null | cut -d' ' -f3; done | sort -un); do \
         [ \"$pg\" -gt 1 ] && kill -\"$1\" -- -\"$pg\" 2>/dev/null; done; \
         for pid in $pids; do kill -\"$1\" \"$pid\" 2>/dev/null; done; }}\n\
         [ \"$count\" -gt 0 ] && signal TERM\n\
         i=0; while [ \"$i\" -lt {grace_steps} ] && [ -n \"$(marked)\" ]; do sleep 0.25; i=$((i+1)); done\n\
         [ -n \"$(marked)\" ] && signal KILL\n\
         echo \"$count\"\n"
    )
}

/// How many processes [`kill_script`] said it found, from its output.
pub(crate) fn killed_count(output: &str) -> u32 {
    output
        .lines()
        .last()
        .and_then(|line| line.trim().parse().ok())
        .unwrap_or(0)
}

/// How long a killed job's output readers may take to pass on what is still in the pipes.
const READER_DRAIN: Duration = Duration::from_secs(1);

/// Lets a killed job's output readers pass on what it said while dying, for at most
/// [`READER_DRAIN`], then ends them: a pipe held open by an escaped child does not keep one
/// past the step.
pub(crate) async fn end_readers(readers: [tokio::task::JoinHandle<()>; 2]) {
    let [mut stdout, mut stderr] = readers;
    let drained = async {
        let _ = (&mut stdout).await;
        let _ = (&mut stderr).await;
    };
    let _ = tokio::time::timeout(READER_DRAIN, drained).await;
    stdout.abort();
    stderr.abort();
}

/// How a job Dropship ended (through its stop token, or past its deadline) exits, once
/// `killed` says whether its processes were killed. When they could not be, the kill's error,
/// which says so: the caller remembers the job as an orphan, killed at the next contact with
/// its server.
pub(crate) fn ended_by_dropship(
    job: &Job,
    killed: Result<u32, ExecError>,
) -> Result<Exit, ExecError> {
    let stopped = job.stop.is_cancelled();
    let error = match killed {
        Ok(_) if stopped => return Ok(Exit::Stopped),
        Ok(_) => return Ok(Exit::TimedOut),
        Err(error) => error,
    };
    tracing::warn!(%error, group = %job.group, "killing a job Dropship ended");
    let what = if stopped { "was stopped" } else { "timed out" };
    let say = |detail: String| {
        format!(
            "the step {what} but its processes could not be killed ({detail}); they are killed before the next step on this server"
        )
    };
    Err(match error {
        ExecError::HostKey { server, detail } => ExecError::HostKey {
            server,
            detail: say(detail),
        },
        ExecError::Connect { server, detail } => ExecError::Connect {
            server,
            detail: say(detail),
        },
        ExecError::Io { server, detail } => ExecError::Io {
            server,
            detail: say(detail),
        },
    })
}

/// How long Dropship waits for a job before it gives up on the server's `timeout`.
pub(crate) fn deadline(job: &Job) -> Duration {
    job.timeout + KILL_GRACE + Duration::from_secs(5)
}

/// Reads `reader` line by line into `output` until it ends. Once `output` keeps no more (cut at
/// a cap, or nobody reading), the rest is read and thrown away unsplit, so the command never
/// blocks on a full pipe and its exit code stays its own.
pub(crate) async fn pump<R: AsyncRead + Unpin>(reader: R, stream: Stream, output: Output) {
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match (&mut reader)
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut buffer)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let cut = !buffer.ends_with(b"\n") && buffer.len() >= MAX_LINE_BYTES;
                while buffer.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buffer.pop();
                }
                let mut line = String::from_utf8_lossy(&buffer).into_owned();
                if cut {
                    line.push_str(" [line cut at 64 KiB]");
                }
                if !output.send((stream, line)).await {
                    break;
                }
            }
        }
    }
    drop(output);
    let _ = tokio::io::copy_buf(&mut reader, &mut tokio::io::sink()).await;
}

/// Maps a finished process's status, `timeout`'s 124 and a kill after it to [`Exit`].
pub(crate) fn exit_from(status: std::process::ExitStatus, elapsed: Duration, job: &Job) -> Exit {
    match status.code() {
        Some(124) if elapsed >= job.timeout => Exit::TimedOut,
        Some(137) if elapsed >= job.timeout => Exit::TimedOut,
        Some(code) => Exit::Code(code),
        None => Exit::Signal,
    }
}

/// Quotes `value` as one `sh` word: how every value reaches a remote shell.
pub fn shell_quote(value: &str) -> String {
    // shlex refuses only NUL bytes, which no shell word can hold; drop them.
    let cleaned = value.replace('\0', "");
    shlex::try_quote(&cleaned)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| "''".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The processes on this machine that carry job group `group`'s mark.
    fn marked(group: &str) -> usize {
        let mark = format!("DROPSHIP_JOB={group}");
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|entry| {
                std::fs::read(entry.path().join("environ")).is_ok_and(|environ| {
                    environ
                        .split(|b| *b == 0)
                        .any(|variable| variable == mark.as_bytes())
                })
            })
            .count()
    }

    /// A stopped job ends at once, and every process it started is killed: those in its
    /// process group, and one that left it with `setsid`.
    #[tokio::test]
    async fn a_stopped_job_has_every_process_killed_even_one_that_left_its_group() {
        let group = format!("unit-stop-{}", std::process::id());
        let stop = tokio_util::sync::CancellationToken::new();
        let job = Job {
            script: "setsid sleep 300 &\nsleep 300 &\necho started\nwait".into(),
            env: Vec::new(),
            secrets: Vec::new(),
            working_dir: None,
            timeout: Duration::from_secs(600),
            group: group.clone(),
            stop: stop.clone(),
        };
        let (sender, mut lines) = Output::channel(OUTPUT_QUEUE_LINES);
        let run = tokio::spawn(async move { Local::new("local").run(&job, sender).await });
        while let Some((_, line)) = lines.recv().await {
            if line == "started" {
                break;
            }
        }
        assert!(marked(&group) >= 3, "the script and its two sleeps run");
        stop.cancel();
        let exit = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("a stopped job ends within the kill grace")
            .unwrap()
            .unwrap();
        assert_eq!(exit, Exit::Stopped);
        assert_eq!(marked(&group), 0, "processes of the job left running");
    }

    /// `kill` finds a job's processes by its mark alone: what a Dropship that crashed left.
    #[tokio::test]
    async fn kill_finds_a_jobs_processes_by_its_mark() {
        let group = format!("unit-orphan-{}", std::process::id());
        use std::os::unix::process::CommandExt as _;
        // In a process group of its own, and spawned straight (no `setsid` exec in between,
        // during which its environment may read empty).
        let mut orphan = std::process::Command::new("sleep")
            .arg("300")
            .env("DROPSHIP_JOB", &group)
            .process_group(0)
            .spawn()
            .unwrap();
        assert_eq!(marked(&group), 1);
        let other = format!("{group}-other");
        let killed = Local::new("local")
            .kill(&[other.clone(), group.clone()])
            .await
            .unwrap();
        assert_eq!(killed, 1);
        orphan.wait().unwrap();
        assert_eq!(marked(&group), 0);
        assert_eq!(Local::new("local").kill(&[group]).await.unwrap(), 0);
    }

    #[test]
    fn job_groups_are_one_shell_word() {
        assert_eq!(job_group("ab12", 12, 3, "web-1.eu"), "ab12-d12-s3-web-1.eu");
        assert_eq!(job_group("a'b", 1, 0, "a b$(x)'"), "ab-d1-s0-a_b__x__");
    }

    #[tokio::test]
    async fn local_job_streams_lines_and_exit_code_and_hides_secrets_from_argv() {
        let local = Local::new("local");
        let job = Job {
            script: "echo \"$GREETING $TOKEN\"\necho oops >&2\nexit 3".into(),
            env: vec![("GREETING".into(), "it's".into())],
            secrets: vec![("TOKEN".into(), SecretString::from("s3cr3t"))],
            working_dir: Some("/".into()),
            timeout: Duration::from_secs(30),
            group: "dropship-unit-test".into(),
            stop: Default::default(),
        };
        let (command, _) = render(&job);
        assert!(!command.contains("s3cr3t"));
        assert!(!format!("{job:?}").contains("s3cr3t"));
        let (sender, mut lines) = Output::channel(OUTPUT_QUEUE_LINES);
        let exit = local.run(&job, sender).await.unwrap();
        assert_eq!(exit, Exit::Code(3));
        let mut seen = Vec::new();
        while let Ok(line) = lines.try_recv() {
            seen.push(line);
        }
        assert!(
            seen.contains(&(Stream::Stdout, "it's s3cr3t".into())),
            "{seen:?}"
        );
        assert!(seen.contains(&(Stream::Stderr, "oops".into())), "{seen:?}");
    }

    #[tokio::test]
    async fn failing_command_stops_the_script() {
        let job = Job {
            script: "false\necho not reached".into(),
            env: vec![],
            secrets: vec![],
            working_dir: None,
            timeout: Duration::from_secs(30),
            group: "dropship-unit-test".into(),
            stop: Default::default(),
        };
        let (sender, mut lines) = Output::channel(OUTPUT_QUEUE_LINES);
        assert_eq!(
            Local::new("local").run(&job, sender).await.unwrap(),
            Exit::Code(1)
        );
        assert!(lines.try_recv().is_err());
    }

    /// Runs `script` locally with the given caps, collecting what reaches the log meanwhile.
    async fn capped_run(
        script: &str,
        step: Arc<Allowance>,
        deployment: Arc<Allowance>,
    ) -> (Exit, Vec<(Stream, String)>) {
        let job = Job {
            script: script.into(),
            env: vec![],
            secrets: vec![],
            working_dir: None,
            timeout: Duration::from_secs(60),
            group: "dropship-unit-test".into(),
            stop: Default::default(),
        };
        let (sender, mut lines) = Output::capped(OUTPUT_QUEUE_LINES, step, deployment);
        let reader = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(line) = lines.recv().await {
                seen.push(line);
            }
            seen
        });
        let exit = Local::new("local").run(&job, sender).await.unwrap();
        (exit, reader.await.unwrap())
    }

    #[tokio::test]
    async fn output_past_the_step_cap_is_cut_once_and_drained_and_the_exit_code_stays() {
        // 20 MB in 100-byte lines: far past the cap, and far past what a pipe holds, so the
        // command would hang if its output were no longer read.
        let script = "head -c 20000000 /dev/zero | tr '\\0' x | fold -w 99\nexit 3";
        let cap = 10 * (99 + LINE_OVERHEAD);
        let (exit, seen) = capped_run(script, Allowance::new(cap), Allowance::unlimited()).await;
        assert_eq!(exit, Exit::Code(3));
        let kept: Vec<&(Stream, String)> =
            seen.iter().filter(|(s, _)| *s == Stream::Stdout).collect();
        assert_eq!(kept.len(), 10, "{} lines kept", kept.len());
        let notes: Vec<&String> = seen
            .iter()
            .filter(|(s, _)| *s == Stream::Dropship)
            .map(|(_, t)| t)
            .collect();
        assert_eq!(
            notes,
            ["output cut: this step's output on this server passed 1.9 KiB; the rest is discarded"]
        );
        assert_eq!(seen.last().unwrap().0, Stream::Dropship);
    }

    #[tokio::test]
    async fn the_deployment_cap_is_shared_by_its_steps() {
        let line = 9 + LINE_OVERHEAD;
        let deployment = Allowance::new(150 * line);
        let script = "i=0; while [ $i -lt 100 ]; do echo 123456789; i=$((i+1)); done";
        let (exit, first) =
            capped_run(script, Allowance::new(100 * line), deployment.clone()).await;
        assert_eq!(exit, Exit::Code(0));
        assert_eq!(first.len(), 100, "100 lines: exactly the step's cap");
        let (exit, second) = capped_run(script, Allowance::new(100 * line), deployment).await;
        assert_eq!(exit, Exit::Code(0));
        assert_eq!(second.len(), 51, "the 50 lines left, and the note");
        assert_eq!(
            second.last().unwrap().1,
            "output cut: this deployment's output reached 15.4 KiB; the rest of this step's is discarded"
        );
    }

    #[tokio::test]
    async fn a_command_whose_output_nobody_reads_still_runs_to_its_end() {
        let job = Job {
            script: "head -c 10000000 /dev/zero | fold -w 100\nexit 4".into(),
            env: vec![],
            secrets: vec![],
            working_dir: None,
            timeout: Duration::from_secs(60),
            group: "dropship-unit-test".into(),
            stop: Default::default(),
        };
        let (sender, lines) = Output::channel(OUTPUT_QUEUE_LINES);
        drop(lines);
        assert_eq!(
            Local::new("local").run(&job, sender).await.unwrap(),
            Exit::Code(4)
        );
    }

    #[test]
    fn byte_counts_read_as_people_write_them() {
        assert_eq!(human_bytes(16 * 1024 * 1024), "16 MiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(2 << 30), "2 GiB");
        assert_eq!(human_bytes(100), "100 bytes");
    }

    #[tokio::test]
    async fn timeout_kills_the_command() {
        let job = Job {
            script: "echo started; sleep 30; echo not reached".into(),
            env: vec![],
            secrets: vec![],
            working_dir: None,
            timeout: Duration::from_secs(1),
            group: "dropship-unit-test".into(),
            stop: Default::default(),
        };
        let (sender, _lines) = Output::channel(OUTPUT_QUEUE_LINES);
        assert_eq!(
            Local::new("local").run(&job, sender).await.unwrap(),
            Exit::TimedOut
        );
    }
}
