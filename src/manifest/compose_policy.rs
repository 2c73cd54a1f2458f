//! A compose file may do only what the operator's container policy allows its repository.
//!
//! Checked on the file's text, after YAML merge keys are applied, right before `docker compose
//! up`: every service's privileges, namespaces, capabilities, devices, published ports and
//! host paths (volumes, `env_file`, `label_file`, `build` contexts, SSH and local caches,
//! `extends`), `provider` services (refused: Compose runs their `type` as a program on the
//! server), and the top level's `include`, `secrets`/`configs` files and bind-type volumes. A
//! checked key may not use interpolation (`${VAR}`): its value must be what the file says, not
//! what an environment makes of it. A file larger than [`super::MAX_MANIFEST_BYTES`] or nested
//! deeper than [`super::positions::MAX_DEPTH`] is refused before it is parsed.

use serde_yaml::Value;

use super::{Diagnostic, Diagnostics};
use crate::config::ContainerPolicy;

/// Checks one compose file; `file` names it in messages.
pub fn check_compose_file(
    file: &str,
    text: &str,
    policy: &ContainerPolicy,
    digest: &str,
) -> Result<(), Diagnostics> {
    let positions = super::bounded_positions(file, "the compose file", text)?;
    let mut found = Vec::new();
    let mut say = |path: &str, message: String| {
        found.push(Diagnostic {
            file: file.to_string(),
            // A key that a merge (`<<: *common`) brought in has no place of its own: point
            // at the nearest enclosing one written in the file.
            position: std::iter::successors(Some(path), |p| p.rsplit_once('.').map(|(a, _)| a))
                .find_map(|p| positions.value(p).or_else(|| positions.key(p))),
            message,
        });
    };
    let mut document: Value = match serde_yaml::from_str(text) {
        Ok(document) => document,
        Err(error) => {
            return Err(Diagnostics(vec![super::yaml_diagnostic(file, &error)]));
        }
    };
    if let Err(error) = document.apply_merge() {
        say("", format!("cannot apply YAML merge keys: {error}"));
    }
    // Compose reads through tags such as `!override` and `!reset`; so does the check.
    let document = untag(document);
    if let Some(services) = document.get("services").and_then(Value::as_mapping) {
        for (name, service) in services {
            let name = text_of(name);
            check_service(&format!("services.{name}"), service, policy, &mut say);
        }
    }
    if let Some(includes) = document.get("include").and_then(Value::as_sequence) {
        for (i, include) in includes.iter().enumerate() {
            let path = format!("include[{i}]");
            match include {
                Value::String(file) => inside_project(&path, file, &mut say),
                Value::Mapping(_) => {
                    for (key, value) in each_string(include.get("path")) {
                        inside_project(&format!("{path}.path{key}"), &value, &mut say);
                    }
                    for (key, value) in each_string(include.get("env_file")) {
                        inside_project(&format!("{path}.env_file{key}"), &value, &mut say);
                    }
                }
                _ => {}
            }
        }
    }
    for section in ["secrets", "configs"] {
        if let Some(entries) = document.get(section).and_then(Value::as_mapping) {
            for (name, entry) in entries {
                if let Some(file) = entry.get("file").and_then(Value::as_str) {
                    let path = format!("{section}.{}.file", text_of(name));
                    host_path(&path, file, policy, &mut say);
                }
            }
        }
    }
    // A stack's own volumes and networks carry its (namespaced) project name; one named
    // outright, or external, must carry the repository's digest, so that no stack mounts or
    // joins another repository's.
    for section in ["volumes", "networks"] {
        if let Some(entries) = document.get(section).and_then(Value::as_mapping) {
            for (name, entry) in entries {
                let key = text_of(name);
                let named = entry.get("name").and_then(Value::as_str);
                let external = entry.get("external").is_some_and(is_true);
                let actual = named.unwrap_or(&key);
                let at = format!("{section}.{key}");
                if named.is_some() || external {
                    // Checked before the digest: `${V:-x-DIGEST}` carries it and means anything.
                    no_interpolation(&at, actual, &mut say);
                }
                if (named.is_some() || external)
                    && !super::containers::carries_digest(actual, digest)
                {
                    say(
                        &at,
                        format!(
                            "`{actual}` names a {} outside this stack, which may be another repository's: use one of this stack's own, or a name carrying this repository's digest ({})",
                            &section[..section.len() - 1],
                            super::containers::namespaced_name(actual, digest)
                        ),
                    );
                }
            }
        }
    }
    if let Some(volumes) = document.get("volumes").and_then(Value::as_mapping) {
        for (name, volume) in volumes {
            let options = volume.get("driver_opts");
            if let Some(device) = options
                .and_then(|o| o.get("device"))
                .and_then(Value::as_str)
            {
                let path = format!("volumes.{}.driver_opts.device", text_of(name));
                no_interpolation(&path, device, &mut say);
                if device.starts_with('/') || device.starts_with('.') || device.starts_with('~') {
                    host_path(&path, device, policy, &mut say);
                }
            }
        }
    }
    if found.is_empty() {
        Ok(())
    } else {
        found.sort_by_key(|d| d.position.map(|p| (p.line, p.column)));
        Err(Diagnostics(found))
    }
}

type Say<'a> = dyn FnMut(&str, String) + 'a;

/// `value` with every YAML tag removed, at every depth.
fn untag(value: Value) -> Value {
    match value {
        Value::Tagged(tagged) => untag(tagged.value),
        Value::Sequence(items) => Value::Sequence(items.into_iter().map(untag).collect()),
        Value::Mapping(map) => Value::Mapping(
            map.into_iter()
                .map(|(key, value)| (untag(key), untag(value)))
                .collect(),
        ),
        other => other,
    }
}

fn check_service(path: &str, service: &Value, policy: &ContainerPolicy, say: &mut Say<'_>) {
    check_provider(path, service, say);
    check_privilege(path, service, policy, say);
    check_namespaces(path, service, policy, say);
    check_labels(path, service, say);
    check_devices(path, service, policy, say);
    check_volumes(path, service, policy, say);
    check_ports(path, service, policy, say);
    check_files(path, service, say);
    check_build(path, service, policy, say);
}

/// `provider`: a program on the server itself.
fn check_provider(path: &str, service: &Value, say: &mut Say<'_>) {
    let field = |key: &str| service.get(key);
    // Compose (2.36 and later) runs `provider.type` as a program on the server itself (a
    // Docker CLI plugin, or a binary on the PATH or in the project directory): nothing a
    // container policy grants covers that.
    if let Some(provider) = field("provider") {
        let at = match provider.get("type") {
            Some(_) => format!("{path}.provider.type"),
            None => format!("{path}.provider"),
        };
        say(
            &at,
            "`provider` runs a program on the server itself, outside any container; the operator config has no grant for it: run the service from an `image`".into(),
        );
    }
}

/// `privileged` and `security_opt`: the container's confinement.
fn check_privilege(path: &str, service: &Value, policy: &ContainerPolicy, say: &mut Say<'_>) {
    let field = |key: &str| service.get(key);
    if let Some(value) = field("privileged") {
        let at = format!("{path}.privileged");
        if is_true(value) && !policy.privileged {
            say(
                &at,
                "`privileged: true` gives the container the whole server; the operator config does not allow it (repos.containers.privileged)".into(),
            );
        }
        interpolated(&at, value, say);
    }
    for (key, value) in each_string(field("security_opt")) {
        let at = format!("{path}.security_opt{key}");
        no_interpolation(&at, &value, say);
        let lowered = value.to_ascii_lowercase();
        let unconfined = lowered.contains("unconfined")
            || lowered.contains("label=disable")
            || lowered.contains("label:disable");
        if unconfined && !policy.privileged {
            say(
                &at,
                format!(
                    "`{value}` turns the container's confinement off; the operator config does not allow it (repos.containers.privileged)"
                ),
            );
        }
    }
}

/// `network_mode`, the other namespaces, and `volumes_from`: what the container shares
/// outside its stack.
fn check_namespaces(path: &str, service: &Value, policy: &ContainerPolicy, say: &mut Say<'_>) {
    let field = |key: &str| service.get(key);
    if let Some(mode) = field("network_mode").and_then(Value::as_str) {
        let at = format!("{path}.network_mode");
        no_interpolation(&at, mode, say);
        if mode == "host" && !policy.host_network {
            say(
                &at,
                "`network_mode: host` shares the server's network and bypasses the proxy; the operator config does not allow it (repos.containers.host_network)".into(),
            );
        } else if mode.starts_with("container:") && !policy.host_namespaces {
            say(
                &at,
                format!(
                    "`{mode}` joins a container outside this stack; the operator config does not allow it (repos.containers.host_namespaces)"
                ),
            );
        }
    }
    for key in ["pid", "ipc", "uts", "cgroup", "userns_mode"] {
        if let Some(mode) = field(key).and_then(Value::as_str) {
            let at = format!("{path}.{key}");
            no_interpolation(&at, mode, say);
            if (mode == "host" || mode.starts_with("container:")) && !policy.host_namespaces {
                say(
                    &at,
                    format!(
                        "`{key}: {mode}` shares a namespace outside this stack; the operator config does not allow it (repos.containers.host_namespaces)"
                    ),
                );
            }
        }
    }
    for (key, from) in each_string(field("volumes_from")) {
        let at = format!("{path}.volumes_from{key}");
        no_interpolation(&at, &from, say);
        if from.starts_with("container:") && !policy.host_namespaces {
            say(
                &at,
                format!(
                    "`{from}` takes the volumes of a container outside this stack; the operator config does not allow it (repos.containers.host_namespaces)"
                ),
            );
        }
    }
}

/// Labels, which may not pass as Dropship's own.
fn check_labels(path: &str, service: &Value, say: &mut Say<'_>) {
    let field = |key: &str| service.get(key);
    // Dropship's own labels mark its containers by repository and app: a stack wearing them
    // could pass its containers off as another repository's (a version that repository's
    // rollback would start, and route to).
    for (at, labels) in [
        (format!("{path}.labels"), field("labels")),
        (
            format!("{path}.deploy.labels"),
            field("deploy").and_then(|d| d.get("labels")),
        ),
    ] {
        let names: Vec<(String, String)> = match labels {
            Some(Value::Mapping(map)) => map
                .keys()
                .map(|k| (format!("{at}.{}", text_of(k)), text_of(k)))
                .collect(),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    item.as_str().map(|s| {
                        let name = s.split('=').next().unwrap_or_default().to_string();
                        (format!("{at}[{i}]"), name)
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        for (label_at, name) in names {
            if name.trim().to_ascii_lowercase().starts_with("dropship.") {
                say(
                    &label_at,
                    format!("label `{name}`: labels starting with dropship. are set by dropship"),
                );
            }
        }
    }
}

/// `cap_add`, `devices` and `device_cgroup_rules`: the host's capabilities and devices.
fn check_devices(path: &str, service: &Value, policy: &ContainerPolicy, say: &mut Say<'_>) {
    let field = |key: &str| service.get(key);
    for (key, cap) in each_string(field("cap_add")) {
        let at = format!("{path}.cap_add{key}");
        no_interpolation(&at, &cap, say);
        if let Some(why) = policy.refuses_capability(&cap) {
            say(&at, why);
        }
    }
    for section in ["devices", "device_cgroup_rules"] {
        if let Some(devices) = field(section).and_then(Value::as_sequence) {
            if !devices.is_empty() && !policy.devices {
                say(
                    &format!("{path}.{section}"),
                    format!(
                        "`{section}` passes host devices in; the operator config does not allow it (repos.containers.devices)"
                    ),
                );
            }
        }
    }
}

/// `volumes`: what the container mounts from the server.
fn check_volumes(path: &str, service: &Value, policy: &ContainerPolicy, say: &mut Say<'_>) {
    let field = |key: &str| service.get(key);
    if let Some(volumes) = field("volumes").and_then(Value::as_sequence) {
        for (i, volume) in volumes.iter().enumerate() {
            let at = format!("{path}.volumes[{i}]");
            match volume {
                Value::String(short) => {
                    no_interpolation(&at, short, say);
                    // Without a `:`, the entry is a path in the container (an anonymous
                    // volume), not a mount source.
                    if let Some((source, _)) = short.split_once(':') {
                        mount_source(&at, source, policy, say);
                    }
                }
                Value::Mapping(_) => {
                    let kind = volume
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("volume");
                    let source = volume.get("source").and_then(Value::as_str).unwrap_or("");
                    no_interpolation(&format!("{at}.source"), source, say);
                    match kind {
                        "bind" => mount_source(&format!("{at}.source"), source, policy, say),
                        "volume" | "tmpfs" | "image" => {}
                        other => say(
                            &format!("{at}.type"),
                            format!("volume type `{other}` is not allowed"),
                        ),
                    }
                }
                _ => {}
            }
        }
    }
}

/// `ports`: what the container publishes on the server.
fn check_ports(path: &str, service: &Value, policy: &ContainerPolicy, say: &mut Say<'_>) {
    let field = |key: &str| service.get(key);
    if let Some(ports) = field("ports").and_then(Value::as_sequence) {
        for (i, port) in ports.iter().enumerate() {
            let at = format!("{path}.ports[{i}]");
            check_port(&at, port, policy, say);
        }
    }
}

/// `env_file`, `label_file` and `extends.file`: files that must lie inside the project.
fn check_files(path: &str, service: &Value, say: &mut Say<'_>) {
    let field = |key: &str| service.get(key);
    for section in ["env_file", "label_file"] {
        for (key, file) in env_files(field(section)) {
            inside_project(&format!("{path}.{section}{key}"), &file, say);
        }
    }
    if let Some(file) = field("extends")
        .and_then(|e| e.get("file"))
        .and_then(Value::as_str)
    {
        inside_project(&format!("{path}.extends.file"), file, say);
    }
}

/// `build`: its context, Dockerfile, network, privileges, ssh and caches.
fn check_build(path: &str, service: &Value, policy: &ContainerPolicy, say: &mut Say<'_>) {
    let field = |key: &str| service.get(key);
    match field("build") {
        Some(Value::String(context)) => build_context(&format!("{path}.build"), context, say),
        Some(build @ Value::Mapping(_)) => {
            if build.get("network").and_then(Value::as_str) == Some("host") && !policy.host_network
            {
                say(
                    &format!("{path}.build.network"),
                    "`network: host` for a build reaches the server's own services; the operator config does not allow it (repos.containers.host_network)".into(),
                );
            }
            let entitled = build
                .get("entitlements")
                .and_then(Value::as_sequence)
                .is_some_and(|e| !e.is_empty());
            let privileged = build.get("privileged").is_some_and(is_true);
            if (entitled || privileged) && !policy.privileged {
                say(
                    &format!("{path}.build"),
                    "a privileged build (`privileged`, `entitlements`) reaches the whole server; the operator config does not allow it (repos.containers.privileged)".into(),
                );
            }
            if let Some(context) = build.get("context").and_then(Value::as_str) {
                build_context(&format!("{path}.build.context"), context, say);
            }
            if let Some(dockerfile) = build.get("dockerfile").and_then(Value::as_str) {
                inside_project(&format!("{path}.build.dockerfile"), dockerfile, say);
            }
            if let Some(extra) = build.get("additional_contexts").and_then(Value::as_mapping) {
                for (name, context) in extra {
                    if let Some(context) = context.as_str() {
                        let at = format!("{path}.build.additional_contexts.{}", text_of(name));
                        build_context(&at, context, say);
                    }
                }
            }
            build_ssh(&format!("{path}.build.ssh"), build.get("ssh"), say);
            for key in ["cache_from", "cache_to"] {
                for (index, entry) in each_string(build.get(key)) {
                    let at = format!("{path}.build.{key}{index}");
                    no_interpolation(&at, &entry, say);
                    if local_cache(&entry) {
                        say(
                            &at,
                            format!(
                                "`{entry}` reads or writes a host path (a `type=local` cache); the operator config has no grant for it: use a registry cache (`type=registry`) or an image"
                            ),
                        );
                    }
                }
            }
        }
        _ => {}
    }
}

fn check_port(at: &str, port: &Value, policy: &ContainerPolicy, say: &mut Say<'_>) {
    if policy.public_ports {
        return;
    }
    let address = match port {
        Value::String(short) => {
            no_interpolation(at, short, say);
            // IP:HOST:CONTAINER (an IPv6 address in brackets); anything shorter publishes on
            // every address.
            let without_protocol = short.split('/').next().unwrap_or_default();
            without_protocol
                .rsplit_once(':')
                .and_then(|(front, _)| front.rsplit_once(':'))
                .map(|(ip, _)| ip.trim_matches(['[', ']']).to_string())
        }
        Value::Number(_) => None,
        // The long syntax publishes (on a port Docker picks without `published`) on
        // `host_ip`, or every address.
        Value::Mapping(_) => port
            .get("host_ip")
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => return,
    };
    let loopback = address.as_deref().is_some_and(super::is_loopback);
    if !loopback {
        say(
            at,
            format!(
                "{} publishes on {}, beside the proxy; publish on 127.0.0.1 (`127.0.0.1:8080:80`) or have the operator config allow public ports (repos.containers.public_ports)",
                match port {
                    Value::String(s) => format!("`{s}`"),
                    _ => "this port".into(),
                },
                address.as_deref().unwrap_or("every address")
            ),
        );
    }
}

/// A bind mount's source: an allowed absolute host path. One in the project directory is
/// refused too: a container could plant a symlink there (`ln -s / data/root`) that a later
/// deployment's `./data/root:/host` would follow on the server.
fn mount_source(at: &str, source: &str, policy: &ContainerPolicy, say: &mut Say<'_>) {
    if source.starts_with('/') {
        host_path(at, source, policy, say);
    } else if source.starts_with('.') || source.starts_with('~') || source.is_empty() {
        say(
            at,
            format!(
                "`{source}` mounts a host path, and a path in the project directory may be a symlink a container planted; use a named volume, or an absolute path the operator config allows (repos.containers.mounts)"
            ),
        );
    }
}

fn host_path(at: &str, path: &str, policy: &ContainerPolicy, say: &mut Say<'_>) {
    if path.starts_with('/') {
        if let Some(why) = policy.refuses_mount(path) {
            say(at, why);
        }
    } else {
        inside_project(at, path, say);
    }
}

/// A relative path that stays inside the project directory.
fn inside_project(at: &str, path: &str, say: &mut Say<'_>) {
    no_interpolation(at, path, say);
    if path.contains("://") || path.starts_with("git@") || path.starts_with("oci:") {
        say(
            at,
            format!(
                "`{path}` is a remote file, which Compose fetches unchecked: use a file of the repository"
            ),
        );
        return;
    }
    let escapes = path.starts_with('/')
        || path.starts_with('~')
        || std::path::Path::new(path)
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    if escapes {
        say(
            at,
            format!(
                "`{path}` is outside the compose project: use a path relative to it, without `..`"
            ),
        );
    }
}

fn build_context(at: &str, context: &str, say: &mut Say<'_>) {
    // A remote context (a Git URL) reads nothing of the server's.
    if context.contains("://") || context.starts_with("git@") {
        no_interpolation(at, context, say);
        return;
    }
    inside_project(at, context, say);
}

/// `build.ssh` hands the server's SSH agent (`default`) or key files to the build: every entry,
/// in a list (`[default, id=path]`) or a mapping (`{default: ~}`), is refused.
fn build_ssh(at: &str, ssh: Option<&Value>, say: &mut Say<'_>) {
    let entries: Vec<(String, String)> = match ssh {
        Some(Value::Mapping(map)) => map
            .iter()
            .map(|(id, path)| {
                let id = text_of(id);
                let entry = match path.as_str() {
                    Some(path) => format!("{id}={path}"),
                    None => id.clone(),
                };
                (format!("{at}.{id}"), entry)
            })
            .collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| (format!("{at}[{i}]"), text_of(item)))
            .collect(),
        Some(Value::Null) | None => Vec::new(),
        Some(other) => vec![(at.to_string(), text_of(other))],
    };
    for (entry_at, entry) in entries {
        say(
            &entry_at,
            format!(
                "`ssh` entry `{entry}` hands the server's SSH agent or keys to the build; the operator config has no grant for it: fetch private code with a build secret or before the build"
            ),
        );
    }
}

/// Whether a `cache_from`/`cache_to` entry (buildx's CSV, `type=local,src=PATH`) is a local
/// cache, which reads or writes a path on the server.
fn local_cache(entry: &str) -> bool {
    entry.split(',').any(|field| {
        let field = field.trim().trim_matches('"').trim();
        field.split_once('=').is_some_and(|(key, value)| {
            key.trim().eq_ignore_ascii_case("type")
                && value.trim().trim_matches('"').eq_ignore_ascii_case("local")
        })
    })
}

fn no_interpolation(at: &str, value: &str, say: &mut Say<'_>) {
    if value.replace("$$", "").contains('$') {
        say(
            at,
            format!("`{value}`: interpolation (`$`) is not allowed here; write the value itself"),
        );
    }
}

fn interpolated(at: &str, value: &Value, say: &mut Say<'_>) {
    if let Value::String(text) = value {
        no_interpolation(at, text, say);
    }
}

fn is_true(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::String(s) => !matches!(
            s.trim().to_ascii_lowercase().as_str(),
            "false" | "no" | "0" | ""
        ),
        _ => true,
    }
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// A string, or each string of a list, with the path suffix that locates it (`""`, `[i]`).
fn each_string(value: Option<&Value>) -> Vec<(String, String)> {
    match value {
        Some(Value::String(s)) => vec![(String::new(), s.clone())],
        Some(Value::Sequence(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| item.as_str().map(|s| (format!("[{i}]"), s.to_string())))
            .collect(),
        _ => Vec::new(),
    }
}

/// `env_file` as a string, a list of strings, or a list of `{path: ...}`.
fn env_files(value: Option<&Value>) -> Vec<(String, String)> {
    match value {
        Some(Value::Sequence(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| match item {
                Value::String(s) => Some((format!("[{i}]"), s.clone())),
                Value::Mapping(_) => item
                    .get("path")
                    .and_then(Value::as_str)
                    .map(|s| (format!("[{i}].path"), s.to_string())),
                _ => None,
            })
            .collect(),
        other => each_string(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusals(text: &str, policy: &ContainerPolicy) -> Vec<String> {
        match check_compose_file("docker-compose.yml", text, policy, "1a2b3c4d") {
            Ok(()) => Vec::new(),
            Err(Diagnostics(found)) => found.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn an_ordinary_stack_passes() {
        let text = "services:\n  web:\n    image: nginx\n    ports: [\"127.0.0.1:8080:80\"]\n    volumes: [\"data:/data\"]\n    env_file: .env.web\n    build: { context: ./web }\n  db:\n    image: postgres\n    expose: [\"5432\"]\nvolumes:\n  data: {}\n";
        assert_eq!(
            refusals(text, &ContainerPolicy::default()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn escapes_are_refused_with_their_position() {
        let text = "x-common: &common\n  privileged: true\nservices:\n  web:\n    <<: *common\n    image: nginx\n    network_mode: host\n    pid: host\n    cap_add: [SYS_ADMIN]\n    devices: [\"/dev/sda:/dev/sda\"]\n    security_opt: [\"seccomp=unconfined\"]\n    ports: [\"8080:80\", \"0.0.0.0:81:81\", \"82\"]\n    volumes:\n      - /:/host\n      - /var/run/docker.sock:/var/run/docker.sock\n      - ../other:/other\n      - type: bind\n        source: /etc\n        target: /etc2\n    env_file: /etc/dropship/secrets.env\n    build: { context: / }\n    extends: { file: ../../x.yml, service: a }\n  b:\n    image: busybox\n    labels: { dropship.repo: other/repo }\n    deploy: { labels: [\"dropship.managed=true\"] }\n    privileged: \"${PRIV}\"\n    network_mode: \"container:other-app\"\nsecrets:\n  key: { file: /root/.ssh/id_ed25519 }\nvolumes:\n  root:\n    driver_opts: { type: none, o: bind, device: / }\ninclude: [../../other/compose.yml]\n";
        let found = refusals(text, &ContainerPolicy::default());
        let all = found.join("\n");
        for expected in [
            "privileged: true",
            "network_mode: host",
            "`pid: host`",
            "capability `SYS_ADMIN`",
            "`devices` passes host devices",
            "seccomp=unconfined",
            "`8080:80` publishes on every address",
            "`0.0.0.0:81:81` publishes on 0.0.0.0",
            "`82` publishes on every address",
            "docker-compose.yml:5:7: `privileged: true`",
            "docker-compose.yml:14:9: `/` holds the Docker socket",
            "`/var/run/docker.sock` holds the Docker socket",
            "`../other` mounts a host path",
            "host path `/etc`",
            "20:15: `/etc/dropship/secrets.env` is outside the compose project",
            "21:23: `/` is outside the compose project",
            "`../../x.yml` is outside",
            "`${PRIV}`: interpolation",
            "`container:other-app` joins a container",
            "host path `/root/.ssh/id_ed25519`",
            "33:49: `/` holds the Docker socket",
            "`../../other/compose.yml` is outside",
            "label `dropship.repo`: labels starting with dropship. are set by dropship",
            "label `dropship.managed`: labels starting",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }

    #[test]
    fn tags_remote_files_project_paths_builds_and_long_ports_are_checked_too() {
        let text = "services:\n  web:\n    image: nginx\n    volumes: [!override \"/:/host\", \"./data/root:/host2\"]\n    ports:\n      - !override \"0.0.0.0:80:80\"\n      - target: 81\n    build: !override { context: ., network: host, entitlements: [security.insecure] }\n  b:\n    image: busybox\n    build: !reset { context: / }\ninclude: [\"oci://docker.io/evil/c:latest\", !override ../x.yml]\n";
        let all = refusals(text, &ContainerPolicy::default()).join("\n");
        for expected in [
            "docker-compose.yml:4:25: `/` holds the Docker socket",
            "`./data/root` mounts a host path",
            "`0.0.0.0:80:80` publishes on 0.0.0.0",
            "docker-compose.yml:7:15: this port publishes on every address",
            "`network: host` for a build",
            "a privileged build",
            "`/` is outside the compose project",
            "`oci://docker.io/evil/c:latest` is a remote file",
            "`../x.yml` is outside",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }

    #[test]
    fn volumes_and_networks_outside_the_stack_must_be_the_repositorys_own() {
        let text = "services:\n  web:\n    image: nginx\nvolumes:\n  db: {external: true, name: shop-9f8e7d6c_db}\n  mine: {external: true, name: data-1a2b3c4d}\n  local: {}\nnetworks:\n  theirs: {name: shop-9f8e7d6c_default}\n  plain: {external: true}\n";
        let found = refusals(text, &ContainerPolicy::default());
        let all = found.join("\n");
        assert_eq!(found.len(), 3, "{all}");
        for expected in [
            "`shop-9f8e7d6c_db` names a volume outside this stack",
            "`shop-9f8e7d6c_default` names a network outside this stack",
            "`plain` names a network outside this stack, which may be another repository's: use one of this stack's own, or a name carrying this repository's digest (plain-1a2b3c4d)",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }

    #[test]
    fn providers_label_files_build_ssh_and_local_caches_are_refused() {
        let text = "services:\n  model:\n    provider:\n      type: ./evil\n      options: { x: y }\n  web:\n    image: nginx\n    label_file: [/etc/dropship/secrets.env, ../x.labels, ./ok.labels]\n    build:\n      context: .\n      ssh: [default, \"key=/root/.ssh/id_ed25519\"]\n      cache_from: [\"type=local,src=/etc\", \"shop/web:cache\", \"type=registry,ref=shop/web:c\"]\n      cache_to: [\" Type=Local ,dest=/srv/cache\"]\n  db:\n    image: postgres\n    label_file: /etc/passwd\n";
        let found = refusals(text, &ContainerPolicy::default());
        let all = found.join("\n");
        assert_eq!(found.len(), 8, "{all}");
        for expected in [
            "docker-compose.yml:4:13: `provider` runs a program on the server itself",
            "docker-compose.yml:8:18: `/etc/dropship/secrets.env` is outside the compose project",
            "docker-compose.yml:8:45: `../x.labels` is outside the compose project",
            "docker-compose.yml:11:13: `ssh` entry `default` hands the server's SSH agent or keys to the build",
            "docker-compose.yml:11:22: `ssh` entry `key=/root/.ssh/id_ed25519` hands",
            "docker-compose.yml:12:20: `type=local,src=/etc` reads or writes a host path",
            "docker-compose.yml:13:18: ` Type=Local ,dest=/srv/cache` reads or writes a host path",
            "docker-compose.yml:16:17: `/etc/passwd` is outside the compose project",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        // A mapping of ssh ids is refused too, and no `provider` is allowed by any policy.
        let text = "services:\n  web:\n    build: { context: ., ssh: { default: ~ } }\n  m:\n    provider: { type: model }\n";
        let open = ContainerPolicy {
            privileged: true,
            docker_socket: true,
            host_network: true,
            host_namespaces: true,
            devices: true,
            public_ports: true,
            mounts: vec!["/*".into()],
            ..ContainerPolicy::default()
        };
        let all = refusals(text, &open).join("\n");
        assert!(all.contains("3:42: `ssh` entry `default` hands"), "{all}");
        assert!(all.contains("5:23: `provider` runs a program"), "{all}");
    }

    #[test]
    fn a_bare_container_path_is_an_anonymous_volume() {
        let text = "services:\n  db:\n    image: postgres\n    volumes: [/var/lib/postgresql/data, \"/:/host\", \"./data:/d\"]\n";
        let all = refusals(text, &ContainerPolicy::default()).join("\n");
        assert!(!all.contains("/var/lib/postgresql/data"), "{all}");
        assert!(all.contains("4:41: `/` holds the Docker socket"), "{all}");
        assert!(all.contains("`./data` mounts a host path"), "{all}");
    }

    #[test]
    fn huge_or_deep_compose_files_are_refused_before_they_are_parsed() {
        let deep = format!(
            "services:\n  web:\n    labels: {}1{}\n",
            "{a: ".repeat(20_000),
            "}".repeat(20_000)
        );
        let error = refusals(&deep, &ContainerPolicy::default()).join("\n");
        assert!(error.starts_with("docker-compose.yml:3:"), "{error}");
        assert!(error.contains("nest deeper than 64 levels"), "{error}");
        let block = format!(
            "services:\n  web:\n    volumes:\n      {}x\n",
            "- ".repeat(1000)
        );
        let error = refusals(&block, &ContainerPolicy::default()).join("\n");
        assert!(error.contains("nest deeper than 64 levels"), "{error}");
        let huge = format!(
            "services:\n  web:\n    image: nginx\n# {}\n",
            "x".repeat(super::super::MAX_MANIFEST_BYTES)
        );
        assert_eq!(
            refusals(&huge, &ContainerPolicy::default()),
            [format!(
                "docker-compose.yml: the compose file is {} bytes; it may be at most 524288 (512 KiB)",
                huge.len()
            )]
        );
    }

    #[test]
    fn a_name_carries_the_digest_at_its_end_or_before_an_underscore_only() {
        // The rule of container steps' names (`carries_digest`): the digest ends the name, or
        // ends a compose project's name before `_`; a digest in the middle is not enough.
        let text = "services:\n  web:\n    image: nginx\nvolumes:\n  a: {external: true, name: x-1a2b3c4d-y}\n  b: {external: true, name: web-1a2b3c4d_data}\nnetworks:\n  host: {external: true, name: host}\n";
        let found = refusals(text, &ContainerPolicy::default());
        let all = found.join("\n");
        assert_eq!(found.len(), 2, "{all}");
        assert!(
            all.contains("`x-1a2b3c4d-y` names a volume outside this stack"),
            "{all}"
        );
        assert!(
            all.contains("`host` names a network outside this stack"),
            "{all}"
        );
    }

    #[test]
    fn the_policy_opens_what_it_names() {
        let text = "services:\n  web:\n    image: nginx\n    network_mode: host\n    cap_add: [NET_ADMIN]\n    volumes: [\"/srv/shop/data:/data\"]\n    ports: [\"8080:80\"]\n";
        let policy = ContainerPolicy {
            mounts: vec!["/srv/shop/*".into()],
            host_network: true,
            cap_add: vec!["NET_ADMIN".into()],
            public_ports: true,
            ..ContainerPolicy::default()
        };
        assert_eq!(refusals(text, &policy), Vec::<String>::new());
    }
}
