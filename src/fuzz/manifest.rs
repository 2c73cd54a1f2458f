//! `Manifest::parse` on manifests built from a grammar of valid pieces and hostile strings
//! (then cut, spliced and nested); `Manifest::plan` of valid-ish manifests against arbitrary
//! deployments (refs, payloads, environment and task names) and inventories, which runs every
//! expression substitution and the script rewriting of `manifest/shell.rs`.

use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde_json::Value;

use super::{config, json_value, nasty_string};
use crate::manifest::{Action, Context, Diagnostics, Inventory, InventoryServer, Manifest};

proptest! {
    #![proptest_config(config())]

    /// Parsing answers every text with a manifest or with diagnostics that each say something,
    /// at 1-based lines and columns.
    #[test]
    fn parse_never_panics(text in hostile_manifest()) {
        if let Err(diagnostics) = Manifest::parse("dropship.yml", &text) {
            check_diagnostics(&diagnostics)?;
        }
    }

    /// The container policy's check of a compose file answers every text, under the strictest
    /// policy, with `Ok` or diagnostics that each say something; a file over the size limit is
    /// refused.
    #[test]
    fn compose_check_never_panics(text in hostile_compose()) {
        let policy = crate::config::ContainerPolicy::default();
        match crate::manifest::check_compose_file("compose.yml", &text, &policy, "1a2b3c4d") {
            Err(diagnostics) => check_diagnostics(&diagnostics)?,
            Ok(()) => prop_assert!(text.len() <= crate::manifest::MAX_MANIFEST_BYTES),
        }
    }

    /// Planning a parsed manifest for any deployment answers with a plan or diagnostics, and a
    /// plan uses only servers the inventory allows.
    #[test]
    fn plan_never_panics(
        text in valid_manifest(),
        context in context(),
        inventory in inventory(),
    ) {
        let manifest = match Manifest::parse("dropship.yml", &text) {
            Ok(manifest) => manifest,
            Err(diagnostics) => return check_diagnostics(&diagnostics),
        };
        let _ = manifest.check_against(&inventory);
        for rule in manifest.auto_deploy() {
            let _ = rule.matches(&context.git_ref);
        }
        let _ = manifest.accepts_environment(&context.environment);
        match manifest.plan(&context, &inventory) {
            Err(diagnostics) => check_diagnostics(&diagnostics)?,
            Ok(plan) => {
                for server in &plan.servers {
                    prop_assert!(
                        inventory.servers.iter().any(|s| &s.name == server && s.allowed),
                        "{} is not allowed", server
                    );
                }
                for step in &plan.steps {
                    for server in &step.servers {
                        prop_assert!(plan.servers.contains(server));
                    }
                }
                prop_assert!(plan.teardown || !plan.steps.is_empty());
                prop_assert_eq!(manifest.plan(&context, &inventory), Ok(plan));
            }
        }
    }

    /// No value of a deployment becomes script text: two deployments that differ only in
    /// their values (sha, ref, id, repository, payload) get the same scripts, byte for byte;
    /// the values travel in the steps' environment.
    #[test]
    fn scripts_do_not_depend_on_the_deployment_values(
        text in valid_manifest(),
        first in context(),
        second in context(),
        inventory in inventory(),
    ) {
        let Ok(manifest) = Manifest::parse("dropship.yml", &text) else {
            return Ok(());
        };
        // Same environment, task and kind of deployment; every value differs.
        let without_image = |payload: Value| match payload {
            Value::Object(mut map) => {
                map.remove("image");
                Value::Object(map)
            }
            other => other,
        };
        let first = Context {
            payload: without_image(first.payload),
            ..first
        };
        let second = Context {
            environment: first.environment.clone(),
            task: first.task.clone(),
            transient: first.transient,
            payload: without_image(second.payload),
            ..second
        };
        let (Ok(one), Ok(two)) = (
            manifest.plan(&first, &inventory),
            manifest.plan(&second, &inventory),
        ) else {
            return Ok(());
        };
        prop_assert_eq!(one.steps.len(), two.steps.len());
        for (a, b) in one.steps.iter().zip(&two.steps) {
            prop_assert_eq!(&a.script, &b.script);
            if let (Action::Container(a), Action::Container(b)) = (&a.action, &b.action) {
                prop_assert_eq!(&a.health.probe, &b.health.probe);
                if let (Some(a), Some(b)) = (&a.command, &b.command) {
                    prop_assert_eq!(shell_script(a), shell_script(b));
                }
            }
        }
    }
}

/// The argument of a container command that a shell runs as a script (`sh -c SCRIPT`).
fn shell_script(command: &[String]) -> Option<&str> {
    let shell = command.first()?.rsplit('/').next()?;
    let flags = command.get(1)?;
    let shells = ["sh", "bash", "dash", "ash", "zsh", "ksh", "mksh"];
    if shells.contains(&shell) && flags.starts_with('-') && flags.contains('c') {
        command.get(2).map(String::as_str)
    } else {
        None
    }
}

fn check_diagnostics(diagnostics: &Diagnostics) -> Result<(), TestCaseError> {
    prop_assert!(!diagnostics.0.is_empty());
    for diagnostic in &diagnostics.0 {
        prop_assert!(!diagnostic.message.trim().is_empty());
        if let Some(position) = diagnostic.position {
            prop_assert!(position.line >= 1 && position.column >= 1, "{}", diagnostic);
        }
    }
    prop_assert!(!diagnostics.to_string().is_empty());
    Ok(())
}

// ---- the grammar ----

const ENVIRONMENTS: &[&str] = &["production", "staging", "pr-1", "review"];
const SERVERS: &[&str] = &["web-1", "worker-1", "worker-2", "db-1", "local"];
const ROLES: &[&str] = &["web", "workers", "db"];
const TASKS: &[&str] = &["deploy", "rollback", "stop", "migrate"];
const SECRETS: &[&str] = &["DATABASE_URL", "TOKEN"];
const DURATIONS: &[&str] = &[
    "30s",
    "1m",
    "10m",
    "1h 30m",
    "2days",
    "500ms",
    "1ns",
    "0s",
    "18446744073709551615s",
    "18446744073709551616s",
    "584542046091y",
    "213503982334601d",
    "soon",
];
/// References that do not parse (the ones that do are `VALID_REFERENCES`).
const INVALID_REFERENCES: &[&str] = &[
    "deployment.shaa",
    "deployment.payload.",
    "deployment.payload..a",
    "secrets.TOKEN",
    "",
];
/// Lines of shell around an expression `{E}` and a hostile string `{S}`: every quoting
/// context an author may write.
const SCRIPT_LINES: &[&str] = &[
    "echo {E}",
    "echo \"ref is {E}\"",
    "echo '{E}'",
    "echo \"'{E}'\"",
    "echo '\"{E}\"'",
    "cat <<EOF\n{E}\nEOF",
    "cat <<'EOF'\n{E}\nEOF",
    "cat <<-\"END\"\n\t{S}\n\tEND",
    "cat <<EOF\n$(echo {E})\nEOF",
    "VALUE={E} sh -c 'echo \"$VALUE\"'",
    "echo {E}{E}",
    "echo $({E})",
    "echo `{E}`",
    "echo \"$(printf '%s' \"{E}\")\"",
    "test -n \"${X:-{E}}\"",
    "echo \\{E}",
    "echo \\${{ deployment.ref }}",
    "# {E}",
    "case {E} in *) echo ok;; esac",
    "{S}",
    "echo {S} {E}",
    "echo \"{S}\" '{S}' {E}",
];

/// A YAML scalar for `text`: as written (so a hostile text may break the document), in
/// double quotes (JSON's escaping is valid YAML) or in single quotes.
fn encode(text: &str, style: u8) -> String {
    match style {
        0 => text.to_string(),
        1 | 2 => serde_json::to_string(text).expect("a string serializes"),
        _ => format!("'{}'", text.replace('\'', "''")),
    }
}

/// A string field: mostly one of `pool`, sometimes hostile (when `hostile`), encoded in any
/// style (or always quoted when not `hostile`, so that the document stays YAML).
fn scalar(pool: &'static [&'static str], hostile: bool) -> BoxedStrategy<String> {
    if hostile {
        (
            prop_oneof![4 => select(pool).prop_map(str::to_string), 1 => nasty_string()],
            0..4u8,
        )
            .prop_map(|(text, style)| encode(&text, style))
            .boxed()
    } else {
        select(pool).prop_map(|text| encode(text, 1)).boxed()
    }
}

/// A number or boolean field, written plain.
fn plain(pool: &'static [&'static str], hostile: bool) -> BoxedStrategy<String> {
    if hostile {
        prop_oneof![4 => select(pool).prop_map(str::to_string), 1 => nasty_string()].boxed()
    } else {
        select(pool).prop_map(str::to_string).boxed()
    }
}

/// A string that may carry expressions and hostile text, always double-quoted.
fn text_with_expressions() -> BoxedStrategy<String> {
    prop::collection::vec(
        prop_oneof![
            reference().prop_map(|r| format!("${{{{ {r} }}}}")),
            nasty_string(),
            "[a-z/.:-]{0,8}",
        ],
        0..4,
    )
    .prop_map(|parts| encode(&parts.concat(), 1))
    .boxed()
}

fn reference() -> BoxedStrategy<String> {
    prop_oneof![
        5 => select(VALID_REFERENCES).prop_map(str::to_string),
        1 => select(INVALID_REFERENCES).prop_map(str::to_string),
        1 => "deployment\\.payload\\.[A-Za-z0-9_-]{1,6}(\\.[A-Za-z0-9_-]{1,6}){0,2}",
        1 => nasty_string(),
    ]
    .boxed()
}

/// One line (or a few) of a shell script.
fn script_line() -> BoxedStrategy<String> {
    (select(SCRIPT_LINES), reference(), nasty_string())
        .prop_map(|(line, reference, hostile)| {
            line.replace("{E}", &format!("${{{{ {reference} }}}}"))
                .replace("{S}", &hostile)
        })
        .boxed()
}

/// `run:` as a literal block (continuation lines indented) or a double-quoted string.
fn run_field(indent: usize) -> BoxedStrategy<String> {
    (prop::collection::vec(script_line(), 1..6), any::<bool>())
        .prop_map(move |(lines, block)| {
            let script = lines.join("\n");
            let pad = " ".repeat(indent + 2);
            if block {
                let body = script.replace('\n', &format!("\n{pad}"));
                format!("{:indent$}run: |\n{pad}{body}\n", "")
            } else {
                format!("{:indent$}run: {}\n", "", encode(&script, 1))
            }
        })
        .boxed()
}

/// `KEY: VALUE` at `indent`, or nothing.
fn field(indent: usize, key: &'static str, value: BoxedStrategy<String>) -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        value.prop_map(move |v| format!("{:indent$}{key}: {v}\n", "")),
    ]
    .boxed()
}

/// `[A, B]`.
fn flow_list(item: BoxedStrategy<String>, max: usize) -> BoxedStrategy<String> {
    prop::collection::vec(item, 0..max)
        .prop_map(|items| format!("[{}]", items.join(", ")))
        .boxed()
}

/// `{K: V, ...}`.
fn flow_map(key: BoxedStrategy<String>, value: BoxedStrategy<String>) -> BoxedStrategy<String> {
    prop::collection::vec((key, value), 0..4)
        .prop_map(|entries| {
            let entries: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            format!("{{{}}}", entries.join(", "))
        })
        .boxed()
}

fn env_keys(hostile: bool) -> BoxedStrategy<String> {
    scalar(
        &[
            "LEVEL",
            "RELEASE",
            "A_1",
            "_X",
            "DROPSHIP_X",
            "9x",
            "a-b",
            "",
        ],
        hostile,
    )
}

fn environment(hostile: bool) -> BoxedStrategy<String> {
    let fields = vec![
        prop_oneof![
            9 => flow_list(
                prop_oneof![
                    scalar(SERVERS, hostile),
                    scalar(ROLES, hostile)
                ]
                .boxed(),
                4,
            )
            .prop_map(|list| format!("    servers: {list}\n")),
            1 => Just(String::new()),
        ]
        .boxed(),
        field(
            4,
            "url",
            prop_oneof![
                text_with_expressions().prop_map(|t| format!("\"https://{}", &t[1..])),
                text_with_expressions(),
            ]
            .boxed(),
        ),
        field(
            4,
            "strategy",
            plain(&["rolling", "parallel", "serial"], hostile),
        ),
        field(
            4,
            "batch",
            plain(
                &[
                    "1",
                    "2",
                    "0",
                    "\"25%\"",
                    "\"100%\"",
                    "\"150%\"",
                    "4294967296",
                    "\"%\"",
                ],
                hostile,
            ),
        ),
        field(4, "pause", scalar(DURATIONS, hostile)),
        field(4, "allow_payload_image", plain(&["true", "false"], hostile)),
    ];
    (scalar(ENVIRONMENTS, hostile), fields)
        .prop_map(|(name, fields)| format!("  {name}:\n{}", fields.concat()))
        .boxed()
}

fn command(hostile: bool) -> BoxedStrategy<String> {
    prop_oneof![
        script_line().prop_map(|s| encode(&s, 1)),
        flow_list(text_with_expressions(), 4),
        flow_list(
            prop_oneof![
                Just("\"sh\"".to_string()),
                Just("\"-c\"".to_string()),
                Just("\"bash\"".to_string()),
                Just("\"-lc\"".to_string()),
                script_line().prop_map(|s| encode(&s, 1)),
            ]
            .boxed(),
            4,
        ),
        plain(&["1", "[]", "{}"], hostile),
    ]
    .boxed()
}

fn container(hostile: bool) -> BoxedStrategy<String> {
    let i = 8;
    let ports = &[
        "8080",
        "\"80:8080\"",
        "\"127.0.0.1:9000:8080\"",
        "\"0.0.0.0::53/udp\"",
        "\"8080/sctp\"",
        "0",
        "\"65536\"",
        "\"a:b:c:d\"",
    ][..];
    let fields = vec![
        field(i, "name", scalar(&["web", "Web", "-x", "a.b_c", ""], hostile)),
        prop_oneof![
            3 => field(i, "image", prop_oneof![scalar(&["ghcr.io/acme/shop", "busybox:1", "x@sha256:ab", " "], hostile), text_with_expressions()].boxed()),
            1 => (
                field(0, "context", scalar(&[".", "app", "../x", "/abs", "a/../../b", ""], hostile)),
                field(0, "dockerfile", scalar(&["Dockerfile", "../Dockerfile", "/etc/passwd"], hostile)),
                field(0, "args", flow_map(env_keys(hostile), text_with_expressions())),
                field(0, "target", scalar(&["prod"], hostile)),
                field(0, "builder", scalar(SERVERS, hostile)),
            )
                .prop_map(move |(a, b, c, d, e)| format!("{:i$}build: {}\n", "", flow_of_lines(&[a, b, c, d, e]))),
        ]
        .boxed(),
        field(i, "tag", text_with_expressions()),
        field(i, "command", command(hostile)),
        field(i, "env", flow_map(env_keys(hostile), text_with_expressions())),
        field(i, "secrets", flow_list(scalar(SECRETS, hostile), 3)),
        field(i, "ports", flow_list(plain(ports, hostile), 3)),
        field(i, "volumes", flow_list(scalar(&["data:/data", "data:/data:ro", "/:/host", "/var/run/docker.sock:/var/run/docker.sock", "x", ":/a", "a:b:c:d"], hostile), 3)),
        field(i, "labels", flow_map(scalar(&["team", "dropship.managed", "a.b"], hostile), text_with_expressions())),
        field(i, "restart", scalar(&["no", "always", "unless-stopped", "on-failure", "sometimes"], hostile)),
        field(i, "memory", scalar(&["512m", "2g", "1024k", "1048576", "0", "1e400", "inf", "-1m", "9223372036854775807g", "1t"], hostile)),
        field(i, "cpus", plain(&["0.5", "1", "0", "-1", ".nan", ".inf", "1e308"], hostile)),
        field(i, "network", scalar(&["shop", "host", "-x", ""], hostile)),
        field(i, "init", plain(&["true", "false"], hostile)),
        field(i, "replicas", plain(&["1", "3", "0", "4294967295"], hostile)),
        field(i, "keep", plain(&["0", "3", "4294967295"], hostile)),
        field(i, "stop_timeout", scalar(DURATIONS, hostile)),
        field(
            i,
            "healthcheck",
            (
                field(0, "path", scalar(&["/up", "up", "/", "/a?b"], hostile)),
                field(0, "port", plain(&["8080", "0", "65535", "65536"], hostile)),
                field(0, "command", command(hostile)),
                field(0, "interval", scalar(DURATIONS, hostile)),
                field(0, "timeout", scalar(DURATIONS, hostile)),
                field(0, "retries", plain(&["1", "0", "4294967295"], hostile)),
                field(0, "start_period", scalar(DURATIONS, hostile)),
            )
                .prop_map(|(a, b, c, d, e, f, g)| flow_of_lines(&[a, b, c, d, e, f, g]))
                .boxed(),
        ),
        field(
            i,
            "proxy",
            (
                field(0, "hosts", flow_list(scalar(&["shop.example.com", "pr.preview.example.com", "-bad-.com", "a..b", "EXAMPLE.COM", "*.example.com"], hostile), 3)),
                field(0, "path_prefix", scalar(&["/", "/api", "api", "/a b", "/?"], hostile)),
                field(0, "port", plain(&["8080", "0", "65536"], hostile)),
            )
                .prop_map(|(a, b, c)| flow_of_lines(&[a, b, c]))
                .boxed(),
        ),
    ];
    fields
        .prop_map(|fields| {
            let body = fields.concat();
            if body.is_empty() {
                "      container: {}\n".to_string()
            } else {
                format!("      container:\n{body}")
            }
        })
        .boxed()
}

/// Fields written as `key: value\n` lines, gathered into one flow mapping.
fn flow_of_lines(lines: &[String]) -> String {
    let entries: Vec<&str> = lines
        .iter()
        .map(|l| l.trim_end_matches('\n'))
        .filter(|l| !l.is_empty())
        .collect();
    format!("{{{}}}", entries.join(", "))
}

fn compose(hostile: bool) -> BoxedStrategy<String> {
    let files = &[
        "docker-compose.yml",
        "deploy/a.yml",
        "../x.yml",
        "/etc/x.yml",
        "a/../b.yml",
        "",
        " ",
    ][..];
    (
        field(
            8,
            "file",
            prop_oneof![scalar(files, hostile), flow_list(scalar(files, hostile), 3)].boxed(),
        ),
        field(
            8,
            "project",
            scalar(&["shop", "Shop_1", "-x", "a b", "../x", ""], hostile),
        ),
        field(
            8,
            "env",
            flow_map(env_keys(hostile), text_with_expressions()),
        ),
    )
        .prop_map(|(a, b, c)| {
            let body = format!("{a}{b}{c}");
            if body.is_empty() {
                "      compose: {}\n".to_string()
            } else {
                format!("      compose:\n{body}")
            }
        })
        .boxed()
}

fn step(hostile: bool) -> BoxedStrategy<String> {
    let kind = prop_oneof![
        6 => run_field(6),
        2 => container(hostile),
        1 => compose(hostile),
        1 => Just(String::new()),
        1 => (run_field(6), container(hostile)).prop_map(|(a, b)| a + &b),
    ];
    let fields = vec![
        field(
            6,
            "on",
            scalar(
                &["all", "first", "web-1", "workers", "db", "nowhere"],
                hostile,
            ),
        ),
        field(6, "timeout", scalar(DURATIONS, hostile)),
        field(
            6,
            "env",
            flow_map(env_keys(hostile), text_with_expressions()),
        ),
        field(
            6,
            "secrets",
            flow_list(scalar(&["DATABASE_URL", "TOKEN", "NOPE", "1x"], hostile), 3),
        ),
        field(
            6,
            "working_dir",
            scalar(&["/srv/app", "", " ", "../.."], hostile),
        ),
        field(6, "continue_on_error", plain(&["true", "false"], hostile)),
    ];
    (
        scalar(&["build", "migrate", "restart", "web", " "], hostile),
        kind,
        fields,
    )
        .prop_map(|(name, kind, fields)| format!("    - name: {name}\n{kind}{}", fields.concat()))
        .boxed()
}

fn task(hostile: bool) -> BoxedStrategy<String> {
    (
        scalar(TASKS, hostile),
        prop::collection::vec(step(hostile), 1..4),
    )
        .prop_map(|(name, steps)| format!("  {name}:\n{}", steps.concat()))
        .boxed()
}

/// A whole manifest. With `hostile`, any field may hold a hostile string written plain.
fn manifest_text(hostile: bool) -> BoxedStrategy<String> {
    let previews = field(
        0,
        "previews",
        (
            field(
                0,
                "environments",
                scalar(&["pr-*", "*", "[", "**", "review"], hostile),
            ),
            scalar(ENVIRONMENTS, hostile),
        )
            .prop_map(|(environments, like)| {
                let environments = environments.trim_end_matches('\n');
                if environments.is_empty() {
                    format!("{{like: {like}}}")
                } else {
                    format!("{{{environments}, like: {like}}}")
                }
            })
            .boxed(),
    );
    let auto_deploy = field(
        0,
        "auto_deploy",
        flow_list(
            (
                scalar(&["main", "release/*", "", "[", "**"], hostile),
                scalar(ENVIRONMENTS, hostile),
                plain(&["push", "checks", "never"], hostile),
                scalar(TASKS, hostile),
            )
                .prop_map(|(branch, environment, on, task)| {
                    format!(
                        "{{branch: {branch}, environment: {environment}, on: {on}, task: {task}}}"
                    )
                })
                .boxed(),
            3,
        ),
    );
    (
        prop_oneof![
            9 => Just("1".to_string()),
            1 => plain(&["2", "0", "-1", "4294967296", "1.0", "'1'"], hostile),
        ],
        prop::collection::vec(environment(hostile), 1..3),
        prop::collection::vec(task(hostile), 1..3),
        previews,
        auto_deploy,
    )
        .prop_map(|(version, environments, tasks, previews, auto_deploy)| {
            format!(
                "version: {version}\nenvironments:\n{}tasks:\n{}{previews}{auto_deploy}",
                environments.concat(),
                tasks.concat()
            )
        })
        .boxed()
}

/// The references that parse.
const VALID_REFERENCES: &[&str] = &[
    "deployment.sha",
    "deployment.ref",
    "deployment.environment",
    "deployment.id",
    "deployment.task",
    "deployment.payload.version",
    "deployment.payload.a.b",
    "deployment.payload.A-b.c_d",
    "deployment.payload.env",
    "repo.owner",
    "repo.name",
];

/// A hostile string that opens no expression of its own.
fn hostile_text() -> BoxedStrategy<String> {
    nasty_string()
        .prop_map(|s| s.replace("${{", "$ {{"))
        .boxed()
}

fn valid_expression() -> BoxedStrategy<String> {
    prop_oneof![
        4 => select(VALID_REFERENCES).prop_map(str::to_string),
        1 => "deployment\\.payload\\.[A-Za-z0-9_-]{1,6}(\\.[A-Za-z0-9_-]{1,6}){0,2}",
    ]
    .prop_map(|r| format!("${{{{ {r} }}}}"))
    .boxed()
}

/// A double-quoted string of valid expressions and hostile text.
fn valid_text() -> BoxedStrategy<String> {
    prop::collection::vec(
        prop_oneof![valid_expression(), hostile_text(), "[a-z/.:-]{0,8}"],
        0..4,
    )
    .prop_map(|parts| encode(&parts.concat(), 1))
    .boxed()
}

fn valid_script() -> BoxedStrategy<String> {
    let line = (select(SCRIPT_LINES), valid_expression(), hostile_text()).prop_map(
        |(line, expression, hostile)| line.replace("{E}", &expression).replace("{S}", &hostile),
    );
    prop::collection::vec(line, 1..6)
        .prop_map(|lines| lines.join("\n"))
        .boxed()
}

fn valid_step(index: usize) -> BoxedStrategy<String> {
    let run = (valid_script(), any::<bool>()).prop_map(|(script, block)| {
        if block {
            format!(
                "      run: |\n        {}\n",
                script.replace('\n', "\n        ")
            )
        } else {
            format!("      run: {}\n", encode(&script, 1))
        }
    });
    let command = prop_oneof![
        valid_script().prop_map(|s| encode(&s, 1)),
        (
            select(&["sh", "/bin/sh", "bash"][..]),
            select(&["-c", "-ec", "-lc"][..]),
            valid_script(),
            valid_text()
        )
            .prop_map(|(shell, flag, script, extra)| format!(
                "[{shell}, {flag}, {}, {extra}]",
                encode(&script, 1)
            )),
        flow_list(valid_text(), 4),
    ];
    let env = || {
        flow_map(
            select(&["LEVEL", "RELEASE", "A_1"][..])
                .prop_map(str::to_string)
                .boxed(),
            valid_text(),
        )
    };
    let source = prop_oneof![
        (field(8, "tag", valid_text()), any::<bool>()).prop_map(|(tag, pinned)| {
            let image = if pinned && tag.is_empty() {
                "ghcr.io/acme/shop:1"
            } else {
                "ghcr.io/acme/shop"
            };
            format!("        image: {image}\n{tag}")
        }),
        env().prop_map(|args| format!("        build: {{args: {args}}}\n")),
    ];
    let container = (
        source,
        field(8, "command", command.boxed()),
        field(8, "env", env()),
        field(
            8,
            "labels",
            flow_map(Just("team".to_string()).boxed(), valid_text()),
        ),
        field(
            8,
            "healthcheck",
            Just("{path: /up, port: 8080}".to_string()).boxed(),
        ),
    )
        .prop_map(|(a, b, c, d, e)| format!("      container:\n{a}{b}{c}{d}{e}"));
    let compose = (field(8, "project", Just("shop".to_string()).boxed()), env()).prop_map(
        |(project, env)| {
            format!("      compose:\n        file: deploy/a.yml\n{project}        env: {env}\n")
        },
    );
    (
        prop_oneof![4 => run.boxed(), 2 => container.boxed(), 1 => compose.boxed()],
        field(
            6,
            "on",
            select(&["all", "first"][..])
                .prop_map(str::to_string)
                .boxed(),
        ),
        field(6, "env", env()),
        field(
            6,
            "timeout",
            select(&["30s", "10m"][..]).prop_map(str::to_string).boxed(),
        ),
    )
        .prop_map(move |(kind, on, env, timeout)| {
            let (env, timeout) = if kind.starts_with("      run") {
                (env, timeout)
            } else {
                Default::default()
            };
            format!("    - name: s{index}\n{kind}{on}{env}{timeout}")
        })
        .boxed()
}

fn valid_task(name: &'static str) -> BoxedStrategy<String> {
    (1..4usize)
        .prop_flat_map(|n| (0..n).map(valid_step).collect::<Vec<_>>())
        .prop_map(move |steps| format!("  {name}:\n{}", steps.concat()))
        .boxed()
}

fn valid_environment(name: &'static str) -> BoxedStrategy<String> {
    (
        prop::sample::subsequence(&["web-1", "worker-1", "workers", "db-1", "local"][..], 1..3),
        prop::option::of(valid_text()),
        any::<bool>(),
    )
        .prop_map(move |(servers, url, rolling)| {
            let url = url.map_or(String::new(), |u| format!(", url: \"https://{}", &u[1..]));
            let rolling = if rolling {
                ", strategy: rolling, batch: 50%, pause: 1s"
            } else {
                ""
            };
            format!(
                "  {name}: {{servers: [{}]{url}{rolling}}}\n",
                servers.join(", ")
            )
        })
        .boxed()
}

/// A manifest valid by construction (unless a hostile string meets a rule), so that planning
/// and script rewriting run on most inputs.
fn valid_manifest() -> BoxedStrategy<String> {
    (
        valid_environment("production"),
        prop::option::of(valid_environment("staging")),
        valid_task("deploy"),
        prop::option::of(valid_task("migrate")),
        any::<bool>(),
    )
        .prop_map(|(production, staging, deploy, migrate, previews)| {
            let previews = if previews {
                "previews: {environments: \"pr-*\", like: production}\n"
            } else {
                ""
            };
            format!(
                "version: 1\nenvironments:\n{production}{}tasks:\n{deploy}{}{previews}",
                staging.unwrap_or_default(),
                migrate.unwrap_or_default()
            )
        })
        .boxed()
}

/// A change to a manifest's text at a byte offset chosen by `Index`.
#[derive(Debug, Clone)]
enum Edit {
    Insert(Index, String),
    Delete(Index, usize),
    Truncate(Index),
    DuplicateLine(Index),
    Tab(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<Index>(), nasty_string()).prop_map(|(i, s)| Edit::Insert(i, s)),
        1 => (any::<Index>(), 1..40usize).prop_map(|(i, n)| Edit::Delete(i, n)),
        1 => any::<Index>().prop_map(Edit::Truncate),
        1 => any::<Index>().prop_map(Edit::DuplicateLine),
        1 => any::<Index>().prop_map(Edit::Tab),
    ]
}

fn boundary(text: &str, index: &Index) -> usize {
    let mut at = index.index(text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &mut String, edit: &Edit) {
    match edit {
        Edit::Insert(at, inserted) => {
            let at = boundary(text, at);
            text.insert_str(at, inserted);
        }
        Edit::Delete(at, n) => {
            let start = boundary(text, at);
            let mut end = (start + n).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            text.replace_range(start..end, "");
        }
        Edit::Truncate(at) => {
            let at = boundary(text, at);
            text.truncate(at);
        }
        Edit::DuplicateLine(at) => {
            let lines: Vec<&str> = text.lines().collect();
            if !lines.is_empty() {
                let n = at.index(lines.len());
                let mut out: Vec<&str> = lines[..=n].to_vec();
                out.extend_from_slice(&lines[n..]);
                *text = out.join("\n");
            }
        }
        Edit::Tab(at) => {
            let at = boundary(text, at);
            let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            text.insert(line_start, '\t');
        }
    }
}

/// Deeply nested YAML: flow sequences and mappings, block sequences (compact and indented),
/// or anchors and aliases that expand exponentially.
fn deep_manifest() -> impl Strategy<Value = String> {
    (0..5u8, 1..3_000usize).prop_map(|(kind, depth)| match kind {
        0 => format!(
            "version: 1\nenvironments: {}{}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        ),
        1 => format!(
            "version: 1\ntasks: {}1{}\n",
            "{a: ".repeat(depth),
            "}".repeat(depth)
        ),
        2 => format!(
            "version: 1\ntasks:\n  deploy:\n    {}x\n",
            "- ".repeat(depth)
        ),
        3 => {
            let mut text = String::from("version: 1\ntasks:\n  deploy:\n");
            for level in 0..depth.min(300) {
                text.push_str(&" ".repeat(4 + level * 2));
                text.push_str("- name: x\n");
                text.push_str(&" ".repeat(6 + level * 2));
                text.push_str("run:\n");
            }
            text
        }
        _ => {
            let depth = depth.min(30);
            let mut text = String::from("a0: &a0 [x, x]\n");
            for level in 1..depth {
                text.push_str(&format!(
                    "a{level}: &a{level} [*a{p}, *a{p}, *a{p}]\n",
                    p = level - 1
                ));
            }
            text.push_str(&format!("version: 1\nenvironments: *a{}\n", depth - 1));
            text
        }
    })
}

/// Any text a repository could commit as `dropship.yml`.
fn hostile_manifest() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => manifest_text(true),
        1 => manifest_text(false),
        4 => (valid_manifest(), prop::collection::vec(edit(), 1..4)).prop_map(|(mut text, edits)| {
            for edit in &edits {
                apply(&mut text, edit);
            }
            text
        }),
        1 => any::<String>(),
        1 => deep_manifest(),
    ]
}

// ---- deployments and inventories ----

fn context() -> impl Strategy<Value = Context> {
    let value = || prop_oneof![3 => nasty_string(), 1 => "[a-z0-9]{1,12}"];
    let payload = prop_oneof![
        3 => json_value().prop_map(|payload| match payload {
            // A payload image replaces the task's steps: kept for one case in four.
            Value::Object(mut map) => {
                map.remove("image");
                Value::Object(map)
            }
            other => other,
        }),
        1 => (
            prop_oneof![json_value(), nasty_string().prop_map(Value::String)],
            json_value(),
            prop::collection::vec(("[A-Z_]{1,4}|9x|a-b", json_value()), 0..3),
            json_value(),
        )
            .prop_map(|(image, port, env, cmd)| {
                serde_json::json!({
                    "image": image,
                    "port": port,
                    "env": env.into_iter().collect::<serde_json::Map<_, _>>(),
                    "cmd": cmd,
                })
            }),
    ];
    (
        (value(), value(), value(), value()),
        prop_oneof![
            6 => Just("production".to_string()),
            2 => select(ENVIRONMENTS).prop_map(str::to_string),
            1 => "pr-[0-9]{1,3}",
            1 => nasty_string(),
        ],
        prop_oneof![
            4 => Just("deploy".to_string()),
            3 => select(TASKS).prop_map(str::to_string),
            1 => nasty_string(),
        ],
        payload,
        any::<i64>(),
        any::<bool>(),
    )
        .prop_map(
            |((sha, git_ref, repo_owner, repo_name), environment, task, payload, id, transient)| {
                Context {
                    deployment_id: id,
                    sha,
                    git_ref,
                    environment,
                    task,
                    payload,
                    repo_owner,
                    repo_name,
                    transient,
                }
            },
        )
}

fn inventory() -> impl Strategy<Value = Inventory> {
    let known = SERVERS
        .iter()
        .map(|name| {
            (
                prop_oneof![6 => Just(true), 1 => Just(false)],
                prop_oneof![6 => Just(true), 1 => Just(false)],
                prop::sample::subsequence(ROLES, 0..=ROLES.len()),
            )
                .prop_map(move |(present, allowed, roles)| {
                    present.then(|| InventoryServer {
                        name: name.to_string(),
                        roles: roles.into_iter().map(str::to_string).collect(),
                        allowed,
                    })
                })
        })
        .collect::<Vec<_>>();
    let other = (nasty_string(), any::<bool>()).prop_map(|(name, allowed)| InventoryServer {
        name,
        roles: vec!["workers".into()],
        allowed,
    });
    let server = (known, prop::collection::vec(other, 0..2))
        .prop_map(|(known, other)| known.into_iter().flatten().chain(other).collect::<Vec<_>>());
    (
        server,
        prop::sample::subsequence(SECRETS, 0..=SECRETS.len()),
        prop::collection::vec(
            prop_oneof![
                select(
                    &[
                        "shop.example.com",
                        "*.example.com",
                        "*.preview.example.com",
                        "*"
                    ][..]
                )
                .prop_map(str::to_string),
                nasty_string(),
            ],
            0..3,
        ),
        prop::option::of(prop_oneof![
            select(&["preview.test", ".preview.test.", ""][..]).prop_map(str::to_string),
            nasty_string(),
        ]),
        select(&["https", "http"][..]),
        // No policy (validate without a repository), the default one, or one that opens
        // everything it can.
        prop_oneof![
            Just(None),
            Just(Some(crate::config::ContainerPolicy::default())),
            (prop::collection::vec(nasty_string(), 0..2), any::<bool>()).prop_map(
                |(mounts, open)| Some(crate::config::ContainerPolicy {
                    mounts,
                    docker_socket: open,
                    host_network: open,
                    privileged: open,
                    host_namespaces: open,
                    cap_add: vec!["ALL".into()],
                    devices: open,
                    public_ports: open,
                    ..crate::config::ContainerPolicy::default()
                })
            ),
        ],
    )
        .prop_map(
            |(servers, secrets, hosts, preview_domain, scheme, containers)| Inventory {
                repo: "acme/shop".into(),
                servers,
                secrets: secrets.into_iter().map(str::to_string).collect(),
                hosts,
                preview_domain,
                preview_scheme: scheme.into(),
                containers,
            },
        )
}

/// A value nested `depth` levels deep: flow sequences, flow mappings, or block sequences
/// (compact, at `indent`).
fn deep_value(kind: u8, depth: usize, indent: usize) -> String {
    match kind % 3 {
        0 => format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
        1 => format!("{}1{}", "{a: ".repeat(depth), "}".repeat(depth)),
        _ => format!("\n{}{}x", " ".repeat(indent), "- ".repeat(depth)),
    }
}

/// Compose files from pieces of every checked key, with hostile values in them, sometimes cut
/// short, nested deep (in a service's key, or whole services nested in block mappings; up to
/// 3,000 levels, past `positions::MAX_DEPTH`) or larger than `MAX_MANIFEST_BYTES`.
fn hostile_compose() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        select(
            &[
                "true",
                "host",
                "\"container:x\"",
                "/",
                "/var/run/docker.sock:/s",
                "../x:/y",
                "\"8080:80\"",
                "\"${X}\"",
                "[SYS_ADMIN, ALL]",
                "{type: bind, source: /etc}",
                "[\"dropship.repo=x\"]",
                "{ dropship.managed: \"true\" }",
                "*a",
                "&a {}",
                "[[[[[[",
                "{a: {b: {c: [1, 2]}}}",
                "~",
                "null",
                "- /x:/y",
                "[/var/lib/data, \"/data\"]",
                "{type: model, options: {x: y}}",
                "[/etc/passwd, ../x]",
                "{context: ., ssh: [default, \"k=/root/.ssh/id\"]}",
                "{ssh: {default: ~}}",
                "{cache_from: [\"type=local,src=/\"], cache_to: [\"type=local,dest=/tmp\"]}",
                "{cache_from: [\"a/b:c\"], cache_to: \"type=inline\"}",
            ][..]
        )
        .prop_map(str::to_string),
        nasty_string().prop_map(|s| format!("{s:?}")),
        (any::<u8>(), 1..3_000usize).prop_map(|(kind, depth)| deep_value(kind, depth, 6)),
    ];
    let key = select(
        &[
            "privileged",
            "security_opt",
            "network_mode",
            "pid",
            "ipc",
            "userns_mode",
            "cap_add",
            "devices",
            "volumes",
            "volumes_from",
            "ports",
            "env_file",
            "build",
            "extends",
            "labels",
            "deploy",
            "<<",
            "image",
            "provider",
            "label_file",
        ][..],
    );
    let service = prop::collection::vec((key, value), 0..6).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(key, value)| format!("    {key}: {value}\n"))
            .collect::<String>()
    });
    // Anything nested deep where the file's top level or a service stands, or a file padded
    // past the size limit.
    let shape = prop_oneof![
        6 => Just(None),
        1 => (any::<u8>(), 1..3_000usize).prop_map(|(kind, depth)| Some((kind, depth))),
    ];
    (
        prop::collection::vec(service, 0..3),
        select(
            &[
                "",
                "include: [../x.yml]\n",
                "secrets: {k: {file: /etc/shadow}}\n",
                "volumes: {v: {driver_opts: {device: /}}}\n",
                "networks: {n: {external: true, name: x-1a2b3c4d-y}}\n",
            ][..],
        ),
        any::<Index>(),
        any::<bool>(),
        shape,
    )
        .prop_map(|(services, top, cut, truncate, shape)| {
            let mut text = String::from("services:\n");
            for (i, service) in services.iter().enumerate() {
                text.push_str(&format!("  s{i}:\n{service}"));
            }
            match shape {
                None => {}
                // Services inside services, as deep block mappings.
                Some((kind, depth)) if kind % 4 == 3 => {
                    for level in 0..depth.min(400) {
                        text.push_str(&" ".repeat(2 + level * 2));
                        text.push_str(&format!("n{level}:\n"));
                    }
                }
                Some((kind, depth)) if kind % 8 == 4 => {
                    // Past the size limit, in a comment (`depth` makes the excess vary).
                    let pad =
                        (crate::manifest::MAX_MANIFEST_BYTES + depth).saturating_sub(text.len());
                    text.push_str(&format!("#{}\n", "x".repeat(pad)));
                }
                Some((kind, depth)) => {
                    text.push_str(&format!("  deep: {}\n", deep_value(kind, depth, 4)));
                }
            }
            text.push_str(top);
            if truncate && !text.is_empty() {
                let mut at = cut.index(text.len());
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                text.truncate(at);
            }
            text
        })
}
