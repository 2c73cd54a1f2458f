//! The machine's real Docker engine, test images made `FROM scratch` with busybox, and a real
//! registry (Debian's `docker-registry`) with basic auth on 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub const SOCKET: &str = "/var/run/docker.sock";
/// The test image: busybox's `sh` and `httpd`, serving `/www` on port 8080.
pub const IMAGE: &str = "dropship-test/web:base";

/// The web app's start script: prints a few lines (one carries the secret it was given, which
/// must never be stored unmasked), then serves. `HEALTHY=no` leaves out the health page;
/// `LINES=N` prints N numbered lines first, a tenth of a second apart.
const START: &str = r#"b=/bin/busybox
$b mkdir -p /www
echo "$VERSION" > /www/version
echo "$VERSION" > /www/index.html
$b mkdir -p /www/api
echo "$VERSION" > /www/api/version
[ "$HEALTHY" = "no" ] || echo ok > /www/up
echo "web $VERSION starting (token $API_TOKEN)"
i=0
while [ "$i" -lt "${LINES:-0}" ]; do echo "line $i"; i=$((i+1)); $b sleep 0.1; done
echo "web $VERSION serving"
exec $b httpd -f -p 8080 -h /www
"#;

pub fn docker() -> Command {
    // Debian's client matches its engine; any other on PATH may be newer than the engine.
    let binary = if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    };
    Command::new(binary)
}

/// Runs a docker command, panicking with its output if it fails.
pub fn run(args: &[&str]) -> String {
    let output = docker().args(args).output().expect("running docker");
    assert!(
        output.status.success(),
        "docker {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Whether the engine runs here, with the test image built (once per test binary).
pub fn available() -> Option<()> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        if !Path::new(SOCKET).exists() {
            return Err(format!(
                "a Docker engine ({SOCKET}; scripts/test starts dockerd)"
            ));
        }
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            return Err("busybox-static (/bin/busybox)".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        std::fs::copy(busybox, dir.path().join("busybox")).map_err(|e| e.to_string())?;
        std::fs::write(dir.path().join("start"), START).map_err(|e| e.to_string())?;
        std::fs::write(dir.path().join("Dockerfile"), dockerfile()).map_err(|e| e.to_string())?;
        let output = docker()
            .args(["build", "-q", "-t", IMAGE])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("docker build: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "building the test image: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        // The SSH test user reaches the engine's socket through its group.
        let _ = Command::new("usermod")
            .args(["-aG", "docker", super::sshd::USER])
            .status();
        Ok(())
    });
    match ready {
        Ok(()) => Some(()),
        Err(what) => {
            super::missing(what);
            None
        }
    }
}

pub fn dockerfile() -> &'static str {
    "FROM scratch\nCOPY busybox /bin/busybox\nCOPY start /start\nENTRYPOINT [\"/bin/busybox\", \"sh\", \"/start\"]\n"
}

/// The files of a repository that builds the test image: (path, contents, mode).
pub fn build_files() -> Vec<(&'static str, Vec<u8>, u32)> {
    vec![
        ("Dockerfile", dockerfile().as_bytes().to_vec(), 0o644),
        ("start", START.as_bytes().to_vec(), 0o755),
        ("busybox", std::fs::read("/bin/busybox").unwrap(), 0o755),
        ("README.md", b"test app\n".to_vec(), 0o644),
    ]
}

/// Removes every container of `repo` (Dropship's label), before and after a test.
pub struct Cleanup(pub String);

impl Cleanup {
    pub fn new(repo: &str) -> Cleanup {
        let cleanup = Cleanup(repo.to_string());
        cleanup.remove();
        cleanup
    }

    fn remove(&self) {
        let ids = run(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=dropship.repo={}", self.0),
        ]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            let _ = docker().args(&args).output();
        }
        // Images Dropship built for the repository (`dropship/OWNER-NAME-APP`, or pushed as
        // `REGISTRY/.../OWNER-NAME-APP`): left from an earlier run, they would be found
        // already built and the build skipped.
        let slug = format!("{}-", self.0.replace('/', "-"));
        let images = run(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        let built: Vec<&str> = images
            .lines()
            .filter(|image| {
                let repository = image.rsplit_once(':').map_or(*image, |(r, _)| r);
                repository
                    .rsplit('/')
                    .next()
                    .is_some_and(|last| last.starts_with(&slug))
            })
            .collect();
        if !built.is_empty() {
            let mut args = vec!["rmi", "-f"];
            args.extend(built);
            let _ = docker().args(&args).output();
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A container as `docker ps` shows it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: String,
    pub name: String,
    pub running: bool,
    pub sha: String,
    pub deployment: String,
}

/// Every container of `repo`'s `app`, newest deployment first.
pub fn containers(repo: &str, app: &str) -> Vec<Seen> {
    let out = run(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=dropship.repo={repo}"),
        "--filter",
        &format!("label=dropship.app={app}"),
        "--format",
        "{{.ID}}\t{{.Names}}\t{{.State}}\t{{.Label \"dropship.sha\"}}\t{{.Label \"dropship.deployment\"}}",
    ]);
    let mut seen: Vec<Seen> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let parts: Vec<&str> = line.split('\t').collect();
            Seen {
                id: parts[0].into(),
                name: parts[1].into(),
                running: parts[2] == "running",
                sha: parts[3].into(),
                deployment: parts[4].into(),
            }
        })
        .collect();
    seen.sort_by_key(|s| std::cmp::Reverse(s.deployment.parse::<i64>().unwrap_or(0)));
    seen
}

/// What the container serves at `path` (through its bridge address).
pub async fn fetch(id: &str, path: &str) -> Option<String> {
    let ip = run(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        id,
    ]);
    let response = reqwest::Client::new()
        .get(format!("http://{ip}:8080{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    Some(response.text().await.ok()?.trim().to_string())
}

/// A real registry with basic auth, on 127.0.0.1, for the test's lifetime.
pub struct Registry {
    child: Child,
    pub address: String,
    pub user: &'static str,
    pub password: &'static str,
    /// A docker CLI config directory logged in to it.
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Option<Registry> {
        let binary = Path::new("/usr/bin/docker-registry");
        if !binary.exists() {
            super::missing("Debian's docker-registry (/usr/bin/docker-registry)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let user = "dropship";
        let password = "registry-pass-1234";
        let hash = bcrypt::hash(password, 4).unwrap();
        std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
        for _attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let address = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {root}\nhttp:\n  addr: {address}\nauth:\n  htpasswd:\n    realm: dropship-test\n    path: {htpasswd}\n",
                    root = dir.path().join("data").display(),
                    htpasswd = dir.path().join("htpasswd").display(),
                ),
            )
            .unwrap();
            let mut child = Command::new(binary)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting docker-registry");
            let stderr = child.stderr.take().unwrap();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("listening on") {
                        let _ = ready_tx.send(true);
                    } else if line.contains("address already in use") {
                        let _ = ready_tx.send(false);
                    }
                }
            });
            match ready_rx.recv_timeout(Duration::from_secs(20)) {
                Ok(true) => {
                    let docker_config = dir.path().join("docker-cli");
                    let registry = Registry {
                        child,
                        address,
                        user,
                        password,
                        config: docker_config,
                        _dir: dir,
                    };
                    let mut login = docker()
                        .arg("--config")
                        .arg(&registry.config)
                        .args(["login", "-u", user, "--password-stdin", &registry.address])
                        .stdin(Stdio::piped())
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap();
                    use std::io::Write;
                    login
                        .stdin
                        .take()
                        .unwrap()
                        .write_all(password.as_bytes())
                        .unwrap();
                    let out = login.wait_with_output().unwrap();
                    assert!(
                        out.status.success(),
                        "docker login: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    return Some(registry);
                }
                Ok(false) => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("docker-registry did not start within 20 s");
                }
            }
        }
        panic!("docker-registry could not bind a port after 5 attempts");
    }

    /// Tags the test image as `REGISTRY/name:tag`, pushes it, and removes the local tag so a
    /// deployment has to pull it (with credentials).
    pub fn push(&self, name: &str, tag: &str) -> String {
        let image = format!("{}/{name}:{tag}", self.address);
        run(&["tag", IMAGE, &image]);
        let out = docker()
            .arg("--config")
            .arg(&self.config)
            .args(["push", &image])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker push {image}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        run(&["rmi", &image]);
        image
    }

    /// The operator config's `[[registries]]` entry.
    pub fn toml(&self) -> String {
        format!(
            "[[registries]]\nserver = \"{}\"\nusername = \"{}\"\npassword = \"{}\"\n",
            self.address, self.user, self.password
        )
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
