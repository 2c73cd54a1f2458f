//! The chaos soak: deployments over many environments on real sshd servers while Dropship is
//! killed with SIGKILL and restarted, sshd servers are restarted under running steps, the fake
//! GitHub answers 5xx and 429 in bursts, and some webhook deliveries are dropped. At the end
//! nothing is lost, nothing is stuck, GitHub has exactly one final status per deployment and
//! nothing after it, no environment ever ran two deployments at once (from the steps' own
//! marks), no step's process is left on any server, and every acknowledged delivery is
//! recorded.
//!
//! The suite runs a short version. `bench/soak.sh` runs the long one (200 deployments, 20
//! environments, 5 servers, at least 10 kills) through the same test with `SOAK_*` variables.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::github::FakeGithub;
use crate::support::sshd::{self, ClientKey, Sshd};
use crate::support::{Process, config_toml, deployment_payload, free_port, healthy, serve};

const SHA: &str = "50a50a50a50a50a50a50a50a50a50a50a50a50a5";
const REPO: &str = "acme/soak";
/// In every step's `sleep` command line, so `pgrep -f` finds exactly the soak's steps.
const MARK: &str = "0.0000042";

/// How big a soak: `SOAK_DEPLOYMENTS`, `SOAK_ENVIRONMENTS`, `SOAK_SERVERS`, `SOAK_KILLS`
/// (Dropship killed and restarted at least this often), `SOAK_SEED`.
struct Params {
    deployments: usize,
    environments: usize,
    servers: usize,
    kills: usize,
    seed: u64,
}

impl Params {
    fn from_env() -> Params {
        let get = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Params {
            deployments: get("SOAK_DEPLOYMENTS", 24) as usize,
            environments: get("SOAK_ENVIRONMENTS", 6) as usize,
            servers: get("SOAK_SERVERS", 2) as usize,
            kills: get("SOAK_KILLS", 2) as usize,
            seed: get(
                "SOAK_SEED",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64,
            ),
        }
    }
}

/// How many steps have marked their start.
fn step_starts(marks: &std::path::Path) -> usize {
    std::fs::read_to_string(marks)
        .map(|text| text.lines().filter(|l| l.contains(" start ")).count())
        .unwrap_or(0)
}

/// Waits until more than `before` steps have marked their start, or `limit` has passed.
async fn a_step_starts(marks: &std::path::Path, before: usize, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut look = tokio::time::interval(Duration::from_millis(20));
    while step_starts(marks) <= before && tokio::time::Instant::now() < deadline {
        look.tick().await;
    }
}

/// Seconds since the epoch, as the steps' `date +%s.%N` marks them.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// xorshift64*: reproducible from the printed seed.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The faults injected, by kind.
#[derive(Default, Debug)]
struct Faults(BTreeMap<&'static str, usize>);

impl Faults {
    fn add(&mut self, kind: &'static str) {
        *self.0.entry(kind).or_default() += 1;
    }
    fn get(&self, kind: &str) -> usize {
        self.0.get(kind).copied().unwrap_or(0)
    }
}

#[tokio::test]
async fn a_soak_under_faults_loses_nothing_and_never_overlaps() {
    if sshd::available().is_none() {
        return;
    }
    let p = Params::from_env();
    println!(
        "soak: {} deployments, {} environments, {} servers, {} kills at least, seed {}",
        p.deployments, p.environments, p.servers, p.kills, p.seed
    );
    let mut dice = Dice(p.seed | 1);
    let key = ClientKey::new();
    let mut sshds: Vec<Sshd> = (0..p.servers).map(|_| Sshd::start(&key)).collect();
    let marks_dir = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(marks_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let marks = marks_dir.path().join("marks");

    // Each environment on one server; each step marks its start and end (also when killed:
    // its TERM trap first ignores TERM, so a second one, as GNU `timeout` relays to its
    // group, does not kill the `date` of the mark).
    let mut manifest = String::from("version: 1\nenvironments:\n");
    for e in 0..p.environments {
        manifest.push_str(&format!("  e{e}:\n    servers: [s{}]\n", e % p.servers));
    }
    let line = |what: &str| {
        format!(
            "echo \"$DROPSHIP_ENVIRONMENT {what} $(date +%s.%N) $DROPSHIP_DEPLOYMENT_ID\" >> {}",
            marks.display()
        )
    };
    manifest.push_str(&format!(
        "tasks:\n  deploy:\n    - name: work\n      timeout: 60s\n      run: |\n        trap 'trap \"\" TERM; {} ; exit 143' TERM\n        {}\n        sleep ${{{{ deployment.payload.sleep }}}} {MARK} &\n        wait $!\n        {}\n",
        line("end"),
        line("start"),
        line("end"),
    ));
    let github = FakeGithub::start().await;
    github.add_file(REPO, SHA, "dropship.yml", &manifest);

    let mut servers = String::new();
    for (i, sshd) in sshds.iter().enumerate() {
        servers.push_str(&sshd.server_toml(&format!("s{i}"), &[], &key, &sshd.host_key));
    }
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let names: Vec<String> = (0..p.servers).map(|i| format!("\"s{i}\"")).collect();
    let extra = format!(
        "{servers}[[repos]]\nname = \"{REPO}\"\nservers = [{}]\n",
        names.join(", ")
    );
    let toml = config_toml(data.path(), &github.url, &extra)
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        .replace(
            "retry_max = \"200ms\"\n",
            "retry_max = \"500ms\"\nreconcile_interval = \"1s\"\n",
        )
        .replacen(
            "[server]\n",
            "[server]\nmax_running_deployments = 32\nshutdown_grace = \"1s\"\n",
            1,
        );
    let config = data.path().join("dropship.toml");
    std::fs::write(&config, toml).unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut dropship: Process = serve(&config);
    healthy(&client, &base).await;

    let mut faults = Faults::default();
    let mut reboots: HashMap<usize, Vec<f64>> = HashMap::new();
    let mut acknowledged: HashSet<i64> = HashSet::new();
    let ids: Vec<i64> = (0..p.deployments as i64).map(|i| 50_000 + i).collect();
    // Faults go between deliveries; kills spread over the run.
    let kill_every = (p.deployments / (p.kills + 1)).max(1);
    let started = Instant::now();
    for (i, github_id) in ids.iter().copied().enumerate() {
        let started_steps = step_starts(&marks);
        let environment = format!("e{}", i % p.environments);
        let sleep = format!("{}.{}", dice.below(3), dice.below(10));
        let payload = json!({ "sleep": sleep });
        github.add_recent_deployment(REPO, github_id, SHA, &environment, payload.clone());
        if dice.chance(5) {
            faults.add("webhook delivery dropped");
        } else {
            let mut body: Value = serde_json::from_slice(&deployment_payload(
                github_id,
                REPO,
                SHA,
                &environment,
                "deploy",
            ))
            .unwrap();
            body["deployment"]["payload"] = payload;
            let answer = crate::support::deliver_to(
                &client,
                &base,
                "deployment",
                &format!("soak-{github_id}"),
                &serde_json::to_vec(&body).unwrap(),
            )
            .await;
            if answer.status().is_success() {
                acknowledged.insert(github_id);
            } else {
                faults.add("webhook delivery refused (Dropship down)");
            }
        }
        if i > 0
            && i % kill_every == 0
            && faults.get("dropship killed (SIGKILL) and restarted") < p.kills
        {
            drop(dropship); // SIGKILL
            faults.add("dropship killed (SIGKILL) and restarted");
            dropship = serve(&config);
            healthy(&client, &base).await;
        }
        match dice.below(20) {
            0 => {
                let which = dice.below(p.servers as u64) as usize;
                sshds[which].restart();
                // A reboot: every process of the server's sessions is gone (SIGKILL, no mark).
                reboots.entry(which).or_default().push(unix_now());
                faults.add("sshd killed and restarted");
            }
            1 => {
                github.status_outage(Some((
                    reqwest::StatusCode::SERVICE_UNAVAILABLE,
                    "Service Unavailable",
                )));
                faults.add("GitHub 503 burst (until the next delivery)");
            }
            2 => {
                for _ in 0..3 {
                    github.refuse_next_status(
                        reqwest::StatusCode::TOO_MANY_REQUESTS,
                        Some(1),
                        "API rate limit exceeded",
                    );
                }
                faults.add("GitHub 429 burst (3 answers)");
            }
            _ => github.status_outage(None),
        }
        // Deliveries spread over the run, so faults land under running steps: the next one
        // waits until a step has started since this one (or a second has passed: every
        // environment may be busy, or this delivery dropped).
        a_step_starts(&marks, started_steps, Duration::from_secs(1)).await;
    }
    github.status_outage(None);

    // Everything ends: lost deliveries are picked up by the reconciler.
    let mut finals = BTreeMap::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for github_id in &ids {
        let statuses = github
            .wait_final(*github_id, Duration::from_secs(300))
            .await;
        let states: Vec<String> = statuses.iter().map(|s| s.state().to_string()).collect();
        let final_at = states
            .iter()
            .position(|s| matches!(s.as_str(), "success" | "failure" | "error"))
            .expect("a final status");
        assert_eq!(
            final_at,
            states.len() - 1,
            "deployment {github_id}: statuses after its final one: {states:?}"
        );
        *finals.entry(states[final_at].clone()).or_insert(0usize) += 1;
        if states[final_at] != "success" {
            // What ended it, without the server's name or the step's timing.
            let why = statuses[final_at].description();
            let why = why.split(": ").take(2).collect::<Vec<_>>().join(": ");
            *reasons.entry(why).or_insert(0usize) += 1;
        }
    }
    let elapsed = started.elapsed();

    // Nothing stuck or missing in Dropship.
    let list: Value =
        crate::support::api_json(&client, format!("{base}/api/deployments?limit=500")).await;
    let list = list.as_array().unwrap();
    let recorded: HashSet<i64> = list
        .iter()
        .filter_map(|d| d["github_deployment_id"].as_i64())
        .collect();
    for github_id in &acknowledged {
        assert!(
            recorded.contains(github_id),
            "acknowledged delivery {github_id} not recorded"
        );
    }
    for github_id in &ids {
        assert!(
            recorded.contains(github_id),
            "deployment {github_id} never recorded"
        );
    }
    let stuck: Vec<&Value> = list
        .iter()
        .filter(|d| matches!(d["state"].as_str(), Some("running" | "queued")))
        .collect();
    assert!(stuck.is_empty(), "stuck: {stuck:?}");

    // No step left running on any server.
    let left = Command::new("pgrep").args(["-f", MARK]).output().unwrap();
    assert!(
        !left.status.success(),
        "steps still running: {}",
        String::from_utf8_lossy(&left.stdout)
    );

    // Never two at once in one environment, from the steps' own marks.
    let text = std::fs::read_to_string(&marks).unwrap_or_default();
    let mut runs: HashMap<(String, String), (f64, Option<f64>)> = HashMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [environment, what, at, id] = parts[..] else {
            panic!("a bad mark: {line:?}");
        };
        let at: f64 = at.parse().unwrap();
        let run = runs
            .entry((environment.to_string(), id.to_string()))
            .or_insert((at, None));
        match what {
            "start" => run.0 = at,
            _ => run.1 = Some(at),
        }
    }
    let mut by_environment: BTreeMap<String, Vec<(f64, Option<f64>, String)>> = BTreeMap::new();
    for ((environment, id), (start, end)) in runs {
        by_environment
            .entry(environment)
            .or_default()
            .push((start, end, id));
    }
    let mut steps_marked = 0;
    for (environment, mut runs) in by_environment {
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        steps_marked += runs.len();
        let server: usize = environment[1..].parse::<usize>().unwrap() % p.servers;
        for pair in runs.windows(2) {
            let (start, end, id) = &pair[0];
            let (next_start, _, next_id) = &pair[1];
            // A step without an end mark died with its server's reboot.
            let end = end.unwrap_or_else(|| {
                reboots
                    .get(&server)
                    .and_then(|times| times.iter().copied().find(|t| t > start))
                    .unwrap_or_else(|| {
                        panic!("{environment}: deployment {id} never marked its end")
                    })
            });
            assert!(
                end <= *next_start,
                "{environment}: deployment {next_id} started at {next_start} while {id} ran ({start} to {end})"
            );
        }
    }

    println!("soak passed in {:.0} s", elapsed.as_secs_f64());
    println!("| fault | times |\n|---|---|");
    for (kind, times) in &faults.0 {
        println!("| {kind} | {times} |");
    }
    println!(
        "deployments: {}, acknowledged deliveries: {}, final statuses: {finals:?}, steps that ran (marked): {steps_marked}",
        ids.len(),
        acknowledged.len()
    );
    for (why, times) in &reasons {
        println!("  ended by: {why} ({times})");
    }
    assert!(
        faults.get("dropship killed (SIGKILL) and restarted") >= p.kills.min(p.deployments - 1)
    );
    drop(dropship);
}
