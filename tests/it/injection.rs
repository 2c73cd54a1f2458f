//! No value from GitHub becomes code: hostile refs and payload values, in every quoting
//! context a manifest author may write, on a real sshd server and in real containers. Each
//! value tries to create a file; none may exist afterwards, and each value is printed as it is.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dropship::config::Config;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::containers::{compose_root, last, sha, world as container_world};
use crate::support::docker;
use crate::support::github::FakeGithub;
use crate::support::sshd::{self, ClientKey, Sshd};
use crate::support::{TestServer, config_toml, deployment_payload};

/// Values that become code if pasted into a shell script in some quoting context; each one
/// would create `dir/pwned-N`.
fn hostile(dir: &str) -> Vec<String> {
    let f = |n: usize| format!("{dir}/pwned-{n}");
    vec![
        format!("$(touch {})", f(0)),
        format!("`touch {}`", f(1)),
        format!("'; touch {}; '", f(2)),
        format!("\"; touch {}; \"", f(3)),
        format!("x\ntouch {}", f(4)),
        format!("$(touch${{IFS}}{})", f(5)),
        format!(";touch${{IFS}}{};", f(6)),
        format!("x\nEOF\ntouch {}\ncat <<EOF", f(7)),
        format!("'\"$(touch {})\"'", f(8)),
        // Split into words or globbed, this would print differently (and with `find`, could
        // be `-exec`).
        "a  b  * -exec  ;".to_string(),
    ]
}

/// A manifest with one step per value, which prints it in every shell quoting context:
/// double quotes, single quotes, unquoted, a heredoc, and an `env` value.
fn shell_manifest(count: usize, control: &str) -> String {
    let mut text = format!(
        "version: 1\nenvironments:\n  production:\n    servers: [box]\ntasks:\n  deploy:\n    - name: control\n      run: touch {control}\n    - name: ref\n      run: |\n        echo \"ref:${{{{ deployment.ref }}}}\"\n        echo 'ref:${{{{ deployment.ref }}}}'\n"
    );
    // Constructs that once misled the scan: a comment right after a subshell, a `#` glued to a
    // substitution, a `case` inside `$( )`.
    let last = format!("${{{{ deployment.payload.v{} }}}}", count - 1);
    text.push_str(&format!(
        "    - name: tricky\n      run: |\n        (cd /)# don't fail\n        echo \"tq:{last}\"\n        echo $(true)#'\n        echo tu:{last}'\n        x=$(case a in a) echo \"tc:{last}\";; esac)\n        printf '%s\\n' \"$x\"\n"
    ));
    for n in 0..count {
        let v = format!("${{{{ deployment.payload.v{n} }}}}");
        text.push_str(&format!(
            "    - name: v{n}\n      env:\n        VALUE: \"{v}\"\n      run: |\n        echo \"dq:{v}\"\n        echo 'sq:{v}'\n        echo uq:{v}\n        cat <<EOF\n        hd:{v}\n        EOF\n        printf 'env:%s\\n' \"$VALUE\"\n        x=$(echo \"{v}\")\n        printf 'subst:%s\\n' \"$x\"\n"
        ));
    }
    text
}

/// The text of every stored log line of `step`, one per line.
fn printed(log: &str, step: &str) -> String {
    log.lines()
        .filter(|l| l.contains(&format!(" {step} stdout | ")))
        .map(|l| {
            l.split_once(" | ")
                .map(|(_, text)| text)
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with("control"))
        .collect()
}

#[tokio::test]
async fn hostile_refs_and_payload_values_are_printed_never_run_in_any_shell_context() {
    if sshd::available().is_none() {
        return;
    }
    // Writable by the test user the steps run as, so that a value that did run would leave
    // its file; `control` proves it.
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let root = dir.path().display().to_string();
    let values = hostile(&root);
    let control = dir.path().join("control");

    let key = ClientKey::new();
    let sshd = Sshd::start(&key);
    let github = FakeGithub::start().await;
    const SHA: &str = "5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e";
    let manifest = shell_manifest(values.len(), &control.display().to_string());
    github.add_file("acme/shell", SHA, "dropship.yml", &manifest);
    let data = tempfile::tempdir().unwrap();
    let config = config_toml(
        data.path(),
        &github.url,
        &format!(
            "{}[[repos]]\nname = \"acme/shell\"\nservers = [\"box\"]\n",
            sshd.server_toml("box", &[], &key, &sshd.host_key)
        ),
    );
    let server = TestServer::start(Config::from_toml(&config).unwrap(), Some(data)).await;

    let mut body: Value = serde_json::from_slice(&deployment_payload(
        7001,
        "acme/shell",
        SHA,
        "production",
        "deploy",
    ))
    .unwrap();
    let payload: serde_json::Map<String, Value> = values
        .iter()
        .enumerate()
        .map(|(n, v)| (format!("v{n}"), Value::String(v.clone())))
        .collect();
    body["deployment"]["payload"] = Value::Object(payload);
    // A branch name is chosen by whoever pushes it.
    body["deployment"]["ref"] = values[0].clone().into();
    let response = server
        .deliver("deployment", "inj-1", &serde_json::to_vec(&body).unwrap())
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let statuses = github.wait_final(7001, Duration::from_secs(60)).await;
    let log = server.log(id).await;
    assert_eq!(
        statuses.last().unwrap().state(),
        "success",
        "{statuses:#?}\n{log}"
    );

    assert!(
        control.exists(),
        "the control step could not write: the test proves nothing"
    );
    assert_eq!(
        leftovers(dir.path()),
        Vec::<PathBuf>::new(),
        "a value ran:\n{log}"
    );
    let tricky = printed(&log, "tricky");
    let value = values.last().unwrap();
    assert_eq!(
        tricky,
        format!("tq:{value}\n#\necho tu:{value}\ntc:{value}"),
        "{log}"
    );
    let refs = printed(&log, "ref");
    assert_eq!(refs, format!("ref:{0}\nref:{0}", values[0]), "{log}");
    for (n, value) in values.iter().enumerate() {
        let text = printed(&log, &format!("v{n}"));
        let expected = ["dq", "sq", "uq", "hd", "env", "subst"]
            .iter()
            .map(|context| format!("{context}:{value}"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(text, expected, "value {n}: {value:?}\n{log}");
    }
}

#[tokio::test]
async fn an_expression_in_a_quoted_heredoc_is_refused_with_its_position() {
    let manifest = "version: 1\nenvironments:\n  production:\n    servers: [box]\ntasks:\n  deploy:\n    - name: say\n      run: |\n        cat <<'EOF'\n        ${{ deployment.ref }}\n        EOF\n";
    let error = dropship::manifest::Manifest::parse("dropship.yml", manifest).unwrap_err();
    assert_eq!(
        error.to_string(),
        "dropship.yml:10:9: `${{ deployment.ref }}` stands in a quoted heredoc (<<'EOF'), which expands nothing: use an unquoted heredoc (<<EOF) or the variable's name"
    );
}

/// A test image with busybox installed as `sh`, `printf`, `touch` and the rest, and a `/tmp`.
const SH_IMAGE: &str = "dropship-test/sh:base";

fn build_sh_image() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/busybox", dir.path().join("busybox")).unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nRUN [\"/bin/busybox\", \"mkdir\", \"-p\", \"/tmp\"]\nENV PATH=/bin\n",
    )
    .unwrap();
    let output = docker::docker()
        .args(["build", "-q", "-t", SH_IMAGE])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "building {SH_IMAGE}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every non-shell context: a container's `command` (as a string for `sh -c` and as a list
/// with a shell script), its `env` and `labels`, build arguments, and a compose step's `env`.
fn container_manifest(count: usize) -> String {
    let v = |n: usize| format!("${{{{ deployment.payload.v{n} }}}}");
    let mut script = String::from("touch /tmp/control; ");
    for n in 0..count {
        script.push_str(&format!(
            "printf '%s\\n' \"dq{n}:{}\" >> /out; echo 'sq{n}:{}' >> /out; ",
            v(n),
            v(n)
        ));
    }
    script.push_str("exec sleep 3600");
    let mut env = String::new();
    let mut labels = String::new();
    let mut args = String::new();
    for n in 0..count {
        env.push_str(&format!("          V{n}: \"{}\"\n", v(n)));
        labels.push_str(&format!("          v{n}: \"{}\"\n", v(n)));
        args.push_str(&format!("            V{n}: \"{}\"\n", v(n)));
    }
    format!(
        r#"version: 1
environments:
  production:
    servers: [box]
tasks:
  deploy:
    - name: string
      container:
        name: string
        image: {SH_IMAGE}
        command: {script:?}
        env:
{env}        labels:
{labels}    - name: list
      container:
        name: list
        image: {SH_IMAGE}
        command: ["sh", "-ec", "touch /tmp/control; printf '%s' \"{v0}\" > /out; exec sleep 3600"]
    - name: built
      container:
        name: built
        build:
          context: .
          args:
{args}    - name: stack
      compose:
        file: compose.yml
        project: inj
        env:
          V0: "{v0}"
"#,
        v0 = v(0),
    )
}

const BUILD_DOCKERFILE: &str = "FROM dropship-test/sh:base\nARG V0\nARG V1\nARG V2\nARG V3\nARG V4\nARG V5\nARG V6\nARG V7\nARG V8\nARG V9\nRUN touch /tmp/control && printf '%s\\n' \"$V0\" \"$V1\" \"$V2\" \"$V3\" \"$V4\" \"$V5\" \"$V6\" \"$V7\" \"$V8\" \"$V9\" > /args\nCMD [\"sleep\", \"3600\"]\n";

const COMPOSE: &str = "services:\n  app:\n    image: dropship-test/sh:base\n    environment:\n      V0: \"${V0}\"\n    command: [\"sh\", \"-c\", \"touch /tmp/control; printf '%s' \\\"$$V0\\\" > /out; exec sleep 3600\"]\n";

fn exec(container: &str, script: &str) -> String {
    docker::run(&["exec", container, "sh", "-c", script])
}

fn one_container(repo: &str, app: &str) -> String {
    let seen = docker::containers(repo, app);
    assert_eq!(seen.len(), 1, "{app}: {seen:?}");
    seen[0].id.clone()
}

#[tokio::test]
async fn hostile_values_reach_containers_builds_and_compose_as_data() {
    if docker::available().is_none() {
        return;
    }
    build_sh_image();
    let values = hostile("/tmp");
    let shas = vec![sha(91)];
    let (_root, extra) = compose_root();
    let manifest = container_manifest(values.len());
    // A build left by an earlier run of this test would be reused: build afresh.
    let _ = docker::docker()
        .args([
            "rmi",
            "-f",
            &format!("dropship/acme-inject-built:{}", shas[0]),
        ])
        .output();
    let Some(w) = container_world("acme/inject", &manifest, &shas, false, &extra).await else {
        return;
    };
    w.github.add_tarball(
        "acme/inject",
        &shas[0],
        &[("Dockerfile", BUILD_DOCKERFILE.as_bytes().to_vec(), 0o644)],
    );
    w.github
        .add_file("acme/inject", &shas[0], "compose.yml", COMPOSE);
    let project = dropship::manifest::namespaced_project("inj", "acme", "inject");
    let _down = crate::containers::ComposeDown(project.clone());
    let payload: serde_json::Map<String, Value> = values
        .iter()
        .enumerate()
        .map(|(n, v)| (format!("v{n}"), Value::String(v.clone())))
        .collect();
    let (id, statuses) = w
        .deploy(1, &shas[0], "deploy", Value::Object(payload))
        .await;
    let log = w.server.log(id).await;
    assert_eq!(last(&statuses).0, "success", "{statuses:#?}\n{log}");

    let string = one_container("acme/inject", "string");
    let expected: String = values
        .iter()
        .enumerate()
        .map(|(n, v)| format!("dq{n}:{v}\nsq{n}:{v}\n"))
        .collect();
    assert_eq!(exec(&string, "cat /out"), expected.trim_end());
    let inspect: Value = serde_json::from_str(&docker::run(&["inspect", &string])).unwrap();
    let config = &inspect[0]["Config"];
    for (n, value) in values.iter().enumerate() {
        assert_eq!(
            config["Labels"][format!("v{n}")],
            json!(value),
            "label v{n}"
        );
        let env = format!("V{n}={value}");
        assert!(
            config["Env"].as_array().unwrap().contains(&json!(env)),
            "env V{n}: {}",
            config["Env"]
        );
    }

    let list = one_container("acme/inject", "list");
    assert_eq!(exec(&list, "cat /out"), values[0]);

    let built = one_container("acme/inject", "built");
    let args: String = values.iter().map(|v| format!("{v}\n")).collect();
    assert_eq!(exec(&built, "cat /args"), args.trim_end());

    let stack = docker::run(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
    ]);
    let stack = stack.trim();
    assert!(!stack.is_empty(), "the compose stack is not running\n{log}");
    assert_eq!(exec(stack, "cat /out"), values[0]);

    // Every container could write (control) and none ran a value.
    for container in [&string, &list, &built, &stack.to_string()] {
        assert_eq!(
            exec(container, "ls /tmp").trim(),
            "control",
            "a value ran in {container}"
        );
    }
    assert!(
        !(0..values.len()).any(|n| Path::new(&format!("/tmp/pwned-{n}")).exists()),
        "a value ran on the server"
    );
}
