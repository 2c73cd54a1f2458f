use expect_test::{Expect, expect};

use super::*;

const GOOD: &str = r#"version: 1
environments:
  production:
    servers: [web-1, workers]
    url: https://${{ deployment.environment }}.example.com
    strategy: rolling
    batch: 50%
    pause: 1s
  staging:
    servers: [web-1]
tasks:
  deploy:
    - name: build
      run: echo building ${{ deployment.sha }} for ${{ repo.name }}
    - name: migrate
      on: first
      run: ./migrate --version ${{ deployment.payload.version }}
      secrets: [DATABASE_URL]
      env:
        LEVEL: ${{ deployment.environment }}
    - name: restart
      on: workers
      run: systemctl restart app
      timeout: 30s
      continue_on_error: true
"#;

fn inventory() -> Inventory {
    let server = |name: &str, roles: &[&str], allowed: bool| InventoryServer {
        name: name.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        allowed,
    };
    Inventory {
        repo: "acme/shop".into(),
        servers: vec![
            server("web-1", &["web"], true),
            server("worker-1", &["workers"], true),
            server("worker-2", &["workers"], true),
            server("db-1", &["db"], false),
        ],
        secrets: ["DATABASE_URL".to_string()].into(),
        hosts: vec!["shop.example.com".into(), "*.preview.example.com".into()],
        preview_domain: Some("preview.test".into()),
        preview_scheme: "https".into(),
        containers: Some(crate::config::ContainerPolicy::default()),
    }
}

fn context(environment: &str, task: &str) -> Context {
    Context {
        deployment_id: 7,
        sha: "0123abc".into(),
        git_ref: "main".into(),
        environment: environment.into(),
        task: task.into(),
        payload: serde_json::json!({"version": "2"}),
        repo_owner: "acme".into(),
        repo_name: "shop".into(),
        transient: false,
    }
}

/// Parses and plans `text` for `production`/`deploy`, printing the diagnostics.
fn check(text: &str, expect: Expect) {
    let result = Manifest::parse("dropship.yml", text).and_then(|m| {
        m.plan(&context("production", "deploy"), &inventory())
            .map(|_| ())
    });
    let actual = match result {
        Ok(()) => "ok".to_string(),
        Err(diagnostics) => diagnostics.to_string(),
    };
    expect.assert_eq(&actual);
}

#[test]
fn a_good_manifest_plans() {
    let manifest = Manifest::parse("dropship.yml", GOOD).unwrap();
    let plan = manifest
        .plan(&context("production", "deploy"), &inventory())
        .unwrap();
    assert_eq!(plan.servers, ["web-1", "worker-1", "worker-2"]);
    assert_eq!(
        plan.environment_url.as_deref(),
        Some("https://production.example.com")
    );
    assert_eq!(
        plan.strategy,
        Strategy::Rolling {
            batch: Batch::Percent(50),
            pause: Some(Duration::from_secs(1))
        }
    );
    // Expressions in scripts are variable references; the values are in the step's env.
    assert_eq!(
        plan.steps[0].script,
        r#"echo building "${DROPSHIP_SHA}" for "${DROPSHIP_REPO_NAME}""#
    );
    assert_eq!(plan.steps[0].env["DROPSHIP_SHA"], "0123abc");
    assert_eq!(plan.steps[0].env["DROPSHIP_REPO_NAME"], "shop");
    assert_eq!(plan.steps[0].servers, plan.servers);
    assert_eq!(plan.steps[0].timeout, DEFAULT_STEP_TIMEOUT);
    assert_eq!(plan.steps[1].servers, ["web-1"]);
    assert_eq!(
        plan.steps[1].script,
        r#"./migrate --version "${DROPSHIP_PAYLOAD_VERSION}""#
    );
    assert_eq!(plan.steps[1].env["DROPSHIP_PAYLOAD_VERSION"], "2");
    assert_eq!(plan.steps[1].env["LEVEL"], "production");
    assert_eq!(plan.steps[1].secrets, ["DATABASE_URL"]);
    assert_eq!(plan.steps[2].servers, ["worker-1", "worker-2"]);
    assert_eq!(plan.steps[2].timeout, Duration::from_secs(30));
    assert!(plan.steps[2].continue_on_error);
}

#[test]
fn the_example_manifest_is_valid() {
    let text = include_str!("../../dropship.example.yml");
    let manifest = Manifest::parse("dropship.example.yml", text).unwrap();
    let inventory = Inventory {
        repo: "_local/example".into(),
        servers: vec![InventoryServer {
            name: "local".into(),
            roles: vec!["local".into()],
            allowed: true,
        }],
        secrets: BTreeSet::new(),
        hosts: Vec::new(),
        preview_domain: None,
        preview_scheme: "http".into(),
        containers: Some(crate::config::ContainerPolicy::default()),
    };
    for environment in manifest.environment_names() {
        for task in manifest.task_names() {
            manifest
                .plan(&context(environment, task), &inventory)
                .unwrap();
        }
    }
}

#[test]
fn batch_sizes() {
    assert_eq!(Batch::Percent(50).size(3), 2);
    assert_eq!(Batch::Percent(1).size(3), 1);
    assert_eq!(Batch::Count(5).size(3), 3);
    assert_eq!(Batch::Count(2).size(3), 2);
}

#[test]
fn diagnostics() {
    check(
        "version: 1\nenvironments:\n  production:\n    serverz: [web-1]\ntasks: {}\n",
        expect![
            "dropship.yml:4:5: environments.production: unknown field `serverz`, expected one of `servers`, `url`, `strategy`, `batch`, `pause`, `timeout`, `allow_payload_image`"
        ],
    );
    check(
        "version: 1\nenvironments:\n  production: {a\n  b: c\n",
        expect![
            "dropship.yml:3:16: environments.production: unknown field `a b`, expected one of `servers`, `url`, `strategy`, `batch`, `pause`, `timeout`, `allow_payload_image`"
        ],
    );
    check(
        "version: 1\nenvironments:\n\tproduction: x\n",
        expect!["dropship.yml:3:1: found character that cannot start any token"],
    );
    check(
        "version: 1\nenvironments:\n  production:\n    servers: [web-1]\n    strategy: rolling\n    batch: 150%\ntasks:\n  deploy:\n    - name: a\n      run: x\n",
        expect![[
            r#"dropship.yml:6:12: batch `150%` must be a count (2) or a percentage from 1% to 100% ("25%")"#
        ]],
    );
    check(
        "version: 2\nenvironments:\n  production:\n    servers: [web-1]\ntasks:\n  deploy:\n    - name: a\n      run: x\n",
        expect![[r#"dropship.yml:1:10: unsupported version 2: this dropship reads version 1"#]],
    );
    check(
        "version: 1\nenvironments:\n  production:\n    servers: [web-1, web-9, db-1]\ntasks:\n  deploy:\n    - name: a\n      run: x\n",
        expect![[r#"
            dropship.yml:4:22: unknown server or role `web-9`: the operator config defines no such server
            dropship.yml:4:29: server `db-1` is not allowed for acme/shop by the operator config"#]],
    );
    check(
        "version: 1\nenvironments:\n  production:\n    servers: [web-1]\ntasks:\n  deploy:\n    - name: a\n      run: |\n        echo ok\n        echo ${{ deployment.shaa }}\n",
        expect![[
            r#"dropship.yml:10:14: unknown expression `deployment.shaa`: use deployment.sha, deployment.ref, deployment.environment, deployment.id, deployment.task, deployment.payload.KEY, repo.owner or repo.name"#
        ]],
    );
    check(
        "version: 1\nenvironments:\n  staging:\n    servers: [web-1]\ntasks:\n  deploy:\n    - name: a\n      run: x\n",
        expect![[
            r#"dropship.yml:2:1: environment `production` is not defined (defined: staging)"#
        ]],
    );
    check(
        "version: 1\nenvironments:\n  production:\n    servers: [web-1]\ntasks:\n  rollback:\n    - name: a\n      run: x\n",
        expect![[r#"dropship.yml:5:1: task `deploy` is not defined (defined: rollback)"#]],
    );
    check(
        "version: 1\nenvironments:\n  production:\n    servers: [web-1]\ntasks:\n  deploy:\n    - name: a\n      on: db\n      run: x\n      secrets: [NOPE]\n",
        expect![[r#"
            dropship.yml:8:11: step `a`: `on: db` matches no server of environment `production` (use all, first, one of its servers or a role one of them has)
            dropship.yml:10:17: secret `NOPE` is not provided for acme/shop by the operator config"#]],
    );
    check(
        "version: 1\nenvironments:\n  production:\n    servers: [web-1]\n    batch: 2\ntasks:\n  deploy:\n    - name: a\n    - name: a\n      run: x\n      env:\n        DROPSHIP_X: y\n        9x: z\n",
        expect![[r#"
            dropship.yml:5:5: `batch` needs `strategy: rolling`
            dropship.yml:8:11: step `a` needs `run` (a shell script), `container` or `compose`
            dropship.yml:9:13: step name `a` is used twice in task `deploy`
            dropship.yml:12:9: `DROPSHIP_X`: names starting with DROPSHIP_ are set by dropship
            dropship.yml:13:9: `9x` is not a valid environment variable name"#]],
    );
    check(
        "version: 1\nenvironments:\n  production:\n    servers: [web-1]\n    strategy: rolling\n    batch: 150%\ntasks:\n  deploy:\n    - name: a\n      run: x\n      timeout: soon\n",
        expect![[
            r#"dropship.yml:11:16: tasks.deploy[0].timeout: invalid value: string "soon", expected a duration"#
        ]],
    );
}

#[test]
fn schema_lists_every_key() {
    let schema = schema();
    for key in [
        "environments",
        "tasks",
        "continue_on_error",
        "working_dir",
        "strategy",
        "batch",
        "pause",
        "allow_payload_image",
        "container",
        "compose",
        "healthcheck",
        "start_period",
        "builder",
        "keep",
        "stop_timeout",
        "replicas",
        "project",
    ] {
        assert!(
            schema.contains(&format!("\"{key}\"")),
            "{key} missing from schema"
        );
    }
    assert!(schema.contains("\"additionalProperties\": false"));
}

const CONTAINERS: &str = r#"version: 1
environments:
  production:
    servers: [web-1]
tasks:
  deploy:
    - name: web
      container:
        image: ghcr.io/acme/shop
        env:
          RELEASE: ${{ deployment.sha }}
        secrets: [DATABASE_URL]
        ports: ["127.0.0.1:9000:8080"]
        memory: 256m
        cpus: 0.5
        healthcheck:
          path: /up
    - name: stack
      compose:
        file: [deploy/a.yml, deploy/b.yml]
"#;

#[test]
fn container_and_compose_steps_plan_and_derive_rollback_and_stop() {
    let manifest = Manifest::parse("dropship.yml", CONTAINERS).unwrap();
    let plan = manifest
        .plan(&context("production", "deploy"), &inventory())
        .unwrap();
    let Action::Container(web) = &plan.steps[0].action else {
        panic!("{:?}", plan.steps[0].action)
    };
    assert_eq!(web.app, "shop");
    assert_eq!(
        web.image,
        ImageSource::Pull("ghcr.io/acme/shop:0123abc".into())
    );
    assert_eq!(web.env["RELEASE"], "0123abc");
    assert_eq!(web.memory_bytes, Some(256 << 20));
    assert_eq!(web.nano_cpus, Some(500_000_000));
    assert_eq!(
        web.health.probe,
        crate::containers::Probe::Http {
            path: "/up".into(),
            port: 8080
        }
    );
    let Action::Compose(stack) = &plan.steps[1].action else {
        panic!()
    };
    assert_eq!(
        stack.project,
        namespaced_project("shop-production", "acme", "shop")
    );
    assert_eq!(stack.project, "shop-production-d21b2cdf");
    assert_eq!(stack.files, ["deploy/a.yml", "deploy/b.yml"]);

    let rollback = manifest
        .plan(&context("production", "rollback"), &inventory())
        .unwrap();
    assert_eq!(rollback.steps.len(), 1);
    assert_eq!(rollback.steps[0].name, "rollback shop");
    let stop = manifest
        .plan(&context("production", "stop"), &inventory())
        .unwrap();
    let kinds: Vec<&str> = stop.steps.iter().map(|s| s.action.kind()).collect();
    assert_eq!(kinds, ["stop", "compose down"]);
}

#[test]
fn a_payload_image_needs_the_environment_to_allow_it() {
    let manifest = Manifest::parse("dropship.yml", CONTAINERS).unwrap();
    let mut ctx = context("production", "deploy");
    ctx.payload =
        serde_json::json!({"image": "acme/app:2", "port": 3000, "env": {"A": 1}, "cmd": "serve"});
    let error = manifest.plan(&ctx, &inventory()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "dropship.yml:3:3: the deployment's payload carries an image, but environment `production` does not set allow_payload_image: true"
    );
    let allowed = CONTAINERS.replace(
        "    servers: [web-1]\n",
        "    servers: [web-1]\n    allow_payload_image: true\n",
    );
    let plan = Manifest::parse("dropship.yml", &allowed)
        .unwrap()
        .plan(&ctx, &inventory())
        .unwrap();
    let Action::Container(app) = &plan.steps[0].action else {
        panic!()
    };
    assert_eq!(app.image, ImageSource::Pull("acme/app:2".into()));
    assert_eq!(app.env["A"], "1");
    assert_eq!(
        app.command.as_deref(),
        Some(&["sh".to_string(), "-c".into(), "serve".into()][..])
    );
}

#[test]
fn container_and_compose_mistakes() {
    check(
        "version: 1\nenvironments:\n  production:\n    servers: [web-1]\ntasks:\n  deploy:\n    - name: a\n      run: x\n      container:\n        image: a\n        build: {}\n        ports: [http]\n        restart: sometimes\n        healthcheck:\n          path: up\n",
        expect![[r#"
            dropship.yml:7:11: step `a` has more than one of `run`, `container` and `compose`; give one
            dropship.yml:11:9: give `image` or `build`, not both
            dropship.yml:12:17: port `http`: `http` is not a port number
            dropship.yml:13:18: restart `sometimes`: use no, always, unless-stopped or on-failure
            dropship.yml:14:9: an HTTP health check needs `port` (or a first entry in `ports`)
            dropship.yml:15:17: `up` must start with `/`"#]],
    );
    check(
        "version: 1\nenvironments:\n  production:\n    servers: [web-1]\ntasks:\n  deploy:\n    - name: a\n      container:\n        image: a\n        secrets: [NOPE]\n        volumes: [data]\n    - name: b\n      compose:\n        project: ../x\n        file: /etc/passwd\n",
        expect![[r#"
            dropship.yml:11:19: volume `data`: expected SOURCE:/TARGET or SOURCE:/TARGET:ro
            dropship.yml:14:18: project `../x`: must match ^[a-zA-Z0-9][a-zA-Z0-9_-]*$ (it names a directory on the server)
            dropship.yml:15:15: `/etc/passwd` is absolute; give a path inside the repository"#]],
    );
    check(
        "version: 1\nenvironments:\n  production:\n    servers: [web-1]\ntasks:\n  deploy:\n    - name: a\n      run: x\n",
        expect!["ok"],
    );
}

#[test]
fn proxy_hosts_must_be_allowed_for_the_repository() {
    check(
        "version: 1\nenvironments:\n  production:\n    servers: [web-1]\ntasks:\n  deploy:\n    - name: web\n      container:\n        image: a\n        ports: [\"3000\"]\n        proxy:\n          hosts: [shop.example.com, pr-1.preview.example.com, evil.example.com]\n",
        expect![
            "dropship.yml:12:63: host `evil.example.com` is not allowed for acme/shop by the operator config (allowed: shop.example.com, *.preview.example.com)"
        ],
    );
    check(
        "version: 1\nenvironments:\n  production:\n    servers: [web-1]\ntasks:\n  deploy:\n    - name: web\n      container:\n        image: a\n        proxy:\n          hosts: [\"not a host\"]\n          path_prefix: api\n",
        expect![[r#"
            dropship.yml:10:9: the proxy needs `port` (or a health check port, or a first entry in `ports`)
            dropship.yml:11:19: `not a host` is not a host name
            dropship.yml:12:24: path_prefix `api` must be a path starting with `/`"#]],
    );
    let text = "version: 1\nenvironments:\n  production:\n    servers: [web-1]\ntasks:\n  deploy:\n    - name: web\n      container:\n        image: a\n        healthcheck: { path: /up, port: 3000 }\n        proxy:\n          hosts: [Shop.Example.com]\n          path_prefix: /api\n";
    let plan = Manifest::parse("dropship.yml", text)
        .unwrap()
        .plan(&context("production", "deploy"), &inventory())
        .unwrap();
    let Action::Container(web) = &plan.steps[0].action else {
        panic!()
    };
    assert_eq!(
        web.proxy,
        Some(ProxyPlan {
            hosts: vec!["shop.example.com".into()],
            path_prefix: "/api".into(),
            port: 3000
        })
    );
}

#[test]
fn previews_run_like_their_environment_with_a_host_of_their_own() {
    let text = "version: 1\nenvironments:\n  staging:\n    servers: [web-1]\npreviews:\n  environments: pr-*\n  like: staging\ntasks:\n  deploy:\n    - name: web\n      container:\n        image: a\n        ports: [\"3000\"]\n        proxy:\n          hosts: [not-allowed.example.org]\n";
    let manifest = Manifest::parse("dropship.yml", text).unwrap();
    let plan = manifest
        .plan(&context("pr-12", "deploy"), &inventory())
        .unwrap();
    assert_eq!(plan.servers, ["web-1"]);
    let Action::Container(web) = &plan.steps[0].action else {
        panic!()
    };
    assert_eq!(
        web.proxy.as_ref().unwrap().hosts,
        [format!(
            "shop-pr-12-{}.preview.test",
            repo_digest("acme", "shop")
        )]
    );
    assert_eq!(
        plan.environment_url.as_deref(),
        Some(
            format!(
                "https://shop-pr-12-{}.preview.test",
                repo_digest("acme", "shop")
            )
            .as_str()
        )
    );
    assert!(!plan.teardown);
    let stop = manifest
        .plan(&context("pr-12", "stop"), &inventory())
        .unwrap();
    assert!(stop.teardown && stop.steps.is_empty());
    // Not a preview: the host must be allowed.
    assert!(
        manifest
            .plan(&context("staging", "deploy"), &inventory())
            .is_err()
    );
    check(
        "version: 1\nenvironments:\n  staging:\n    servers: [web-1]\npreviews:\n  like: prod\ntasks:\n  deploy:\n    - name: a\n      run: x\n",
        expect!["dropship.yml:6:9: previews are like environment `prod`, which is not defined"],
    );
}

#[test]
fn transient_environment_never_turns_a_defined_environment_into_a_preview() {
    let text = "version: 1\nenvironments:\n  staging:\n    servers: [web-1]\npreviews:\n  environments: pr-*\n  like: staging\ntasks:\n  deploy:\n    - name: web\n      container:\n        image: a\n        ports: [\"3000\"]\n        proxy:\n          hosts: [shop.example.com]\n";
    let manifest = Manifest::parse("dropship.yml", text).unwrap();
    let mut transient = context("staging", "deploy");
    transient.transient = true;
    let plan = manifest.plan(&transient, &inventory()).unwrap();
    assert!(!plan.preview);
    let Action::Container(web) = &plan.steps[0].action else {
        panic!()
    };
    // Its own host, not a preview host; and `task: stop` is not a teardown.
    assert_eq!(web.proxy.as_ref().unwrap().hosts, ["shop.example.com"]);
    transient.task = "stop".into();
    assert!(!manifest.plan(&transient, &inventory()).unwrap().teardown);
    // An undefined transient environment is still a preview.
    let mut undefined = context("feature-x", "deploy");
    undefined.transient = true;
    assert!(manifest.plan(&undefined, &inventory()).unwrap().preview);
}

#[test]
fn an_environments_timeout_is_longer_than_zero_and_at_most_a_day() {
    check(
        "version: 1\nenvironments:\n  production:\n    servers: [web-1]\n    timeout: 25h\n  staging:\n    servers: [web-1]\n    timeout: 0s\ntasks:\n  deploy:\n    - name: a\n      run: x\n",
        expect![[r#"
            dropship.yml:5:14: a duration may be at most 24h
            dropship.yml:8:14: a timeout must be longer than zero"#]],
    );
}

#[test]
fn durations_are_bounded_with_their_position() {
    check(
        "version: 1\nenvironments:\n  production:\n    servers: [web-1]\n    strategy: rolling\n    pause: 100000h\ntasks:\n  deploy:\n    - name: a\n      timeout: 18446744073709551615s\n      run: x\n    - name: web\n      container:\n        image: a\n        stop_timeout: 25h\n        healthcheck: { command: [\"true\"], interval: 9999999h }\n",
        expect![[r#"
            dropship.yml:6:12: a duration may be at most 24h
            dropship.yml:10:16: a duration may be at most 24h
            dropship.yml:15:23: a duration may be at most 24h
            dropship.yml:16:53: a duration may be at most 24h"#]],
    );
}

#[test]
fn container_steps_get_only_what_the_container_policy_allows() {
    check(
        "version: 1\nenvironments:\n  production:\n    servers: [web-1]\ntasks:\n  deploy:\n    - name: web\n      container:\n        image: a\n        network: host\n        ports: [\"0.0.0.0:80:80\", \"127.0.0.1:81:81\", \"8080:80\"]\n        volumes: [\"/:/host\", \"/var/run/docker.sock:/var/run/docker.sock\", \"/srv/data:/data\", \"data:/data2\"]\n",
        expect![[r#"
            dropship.yml:10:18: `network: host` shares the server's network and bypasses the proxy; the operator config does not allow it (repos.containers.host_network)
            dropship.yml:11:17: `0.0.0.0:80:80` publishes on 0.0.0.0, beside the proxy; ports are published on the server's private address unless the operator config allows public ports (repos.containers.public_ports)
            dropship.yml:12:19: `/` holds the Docker socket, which controls the whole server; the operator config does not allow it (repos.containers.docker_socket)
            dropship.yml:12:30: `/var/run/docker.sock` holds the Docker socket, which controls the whole server; the operator config does not allow it (repos.containers.docker_socket)
            dropship.yml:12:75: host path `/srv/data`: this repository may use named volumes only (the operator config's repos.containers.mounts allows host paths)"#]],
    );
}

#[test]
fn script_expressions_and_reserved_names() {
    check(
        "version: 1\nenvironments:\n  production:\n    servers: [web-1]\n    url: javascript:alert(1)//${{ deployment.ref }}\ntasks:\n  deploy:\n    - name: a\n      env:\n        DROPSHIP_REF: spoofed\n      run: echo hi\n    - name: web\n      container:\n        image: a\n        env:\n          DROPSHIP_SHA: spoofed\n        labels:\n          dropship.repo: acme/other\n        command: [\"sh\", \"-c\", \"cat <<'EOF'\\n${{ deployment.ref }}\\nEOF\"]\n",
        expect![[r#"
            dropship.yml:5:10: url `javascript:alert(1)//${{ deployment.ref }}` must start with https:// or http:// (expressions may fill in the rest)
            dropship.yml:10:9: `DROPSHIP_REF`: names starting with DROPSHIP_ are set by dropship
            dropship.yml:16:11: `DROPSHIP_SHA`: names starting with DROPSHIP_ are set by dropship
            dropship.yml:18:11: `dropship.repo`: labels starting with dropship. are set by dropship
            dropship.yml:19:45: `${{ deployment.ref }}` stands in a quoted heredoc (<<'EOF'), which expands nothing: use an unquoted heredoc (<<EOF) or the variable's name"#]],
    );
}

#[test]
fn url_values_are_percent_encoded_and_container_commands_refer_to_variables() {
    let text = "version: 1\nenvironments:\n  production:\n    servers: [web-1]\n    url: https://shop.example.com/${{ deployment.ref }}\ntasks:\n  deploy:\n    - name: web\n      container:\n        image: a\n        command: \"echo ${{ deployment.ref }}\"\n    - name: list\n      container:\n        name: list\n        image: a\n        command: [\"env\", \"bash\", \"-e\", \"-xc\", \"echo '${{ deployment.ref }}'\", \"--plain\"]\n";
    let manifest = Manifest::parse("dropship.yml", text).unwrap();
    let mut context = context("production", "deploy");
    context.git_ref = "x/../../@evil.com#$(id)".into();
    let plan = manifest.plan(&context, &inventory()).unwrap();
    assert_eq!(
        plan.environment_url.as_deref(),
        Some("https://shop.example.com/x%2F..%2F..%2F%40evil.com%23%24%28id%29")
    );
    let Action::Container(web) = &plan.steps[0].action else {
        panic!()
    };
    assert_eq!(
        web.command.as_deref().unwrap(),
        ["sh", "-c", r#"echo "${DROPSHIP_REF}""#]
    );
    assert_eq!(web.env["DROPSHIP_REF"], context.git_ref);
    let Action::Container(list) = &plan.steps[1].action else {
        panic!()
    };
    assert_eq!(
        list.command.as_deref().unwrap(),
        [
            "env",
            "bash",
            "-e",
            "-xc",
            r#"echo ''"${DROPSHIP_REF}"''"#,
            "--plain"
        ]
    );
    // Anywhere else in a list, an expression is refused: the program may run it.
    check(
        "version: 1\nenvironments:\n  production:\n    servers: [web-1]\ntasks:\n  deploy:\n    - name: web\n      container:\n        image: a\n        command: [\"bash\", \"-o\", \"pipefail\", \"-c\", \"echo ${{ deployment.ref }}\"]\n    - name: app\n      container:\n        name: app\n        image: a\n        command: [\"./app\", \"--ref=${{ deployment.ref }}\"]\n",
        expect![[r#"
            dropship.yml:10:57: `${{ deployment.ref }}` may stand in a command list only in the script a shell runs (`[sh, -c, SCRIPT]`), where it becomes a variable: elsewhere the program may run it as code; pass the value through `env:` and read the variable
            dropship.yml:15:35: `${{ deployment.ref }}` may stand in a command list only in the script a shell runs (`[sh, -c, SCRIPT]`), where it becomes a variable: elsewhere the program may run it as code; pass the value through `env:` and read the variable"#]],
    );
}

#[test]
fn deep_or_huge_manifests_are_refused_without_exhausting_the_stack() {
    // 1,000 levels of block sequences overflowed a 2 MiB stack in a recursive YAML loader.
    let deep = format!("{}x\n", "- ".repeat(1000));
    let error = Manifest::parse("dropship.yml", &deep)
        .unwrap_err()
        .to_string();
    assert!(error.contains("nest deeper than 64 levels"), "{error}");
    let flow = format!(
        "version: 1\nenvironments: {}{}\n",
        "{a: ".repeat(20_000),
        "}".repeat(20_000)
    );
    let error = Manifest::parse("dropship.yml", &flow)
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("dropship.yml:2:"), "{error}");
    let huge = format!("version: 1\n# {}\n", "x".repeat(MAX_MANIFEST_BYTES));
    assert_eq!(
        Manifest::parse("dropship.yml", &huge)
            .unwrap_err()
            .to_string(),
        format!(
            "dropship.yml: the manifest is {} bytes; it may be at most 524288 (512 KiB)",
            huge.len()
        )
    );
}
