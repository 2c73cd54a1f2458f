//! `webhook::verify` with arbitrary secrets, headers and bodies; `webhook::parse` with real
//! GitHub deliveries whose fields are replaced by arbitrary JSON, and with raw bytes.

use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

use super::{config, deep_json, json_value, nasty_string};
use crate::webhook::{Event, PayloadError, SignatureError, parse, sign, verify};

/// What stands in the `X-Hub-Signature-256` header of one case.
#[derive(Debug, Clone)]
enum Header {
    Missing,
    Text(String),
    /// `sha256=` followed by these (hex-ish) digits.
    Digits(String),
    /// The right signature under secret `Index`, or under a key no secret equals.
    Signed(Index),
    Foreign(Vec<u8>),
    /// The right signature with one digit changed.
    Flipped(Index, Index),
    /// The right signature with its digits in upper case.
    Upper(Index),
}

fn header() -> impl Strategy<Value = Header> {
    prop_oneof![
        Just(Header::Missing),
        nasty_string().prop_map(Header::Text),
        "[0-9a-fA-FxZ =]{0,70}".prop_map(Header::Digits),
        "[0-9a-f]{64}".prop_map(Header::Digits),
        any::<Index>().prop_map(Header::Signed),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(Header::Foreign),
        (any::<Index>(), any::<Index>()).prop_map(|(s, d)| Header::Flipped(s, d)),
        any::<Index>().prop_map(Header::Upper),
    ]
}

fn header_text(header: &Header, secrets: &[Vec<u8>], body: &[u8]) -> Option<String> {
    let signed = |index: &Index| {
        let secret = if secrets.is_empty() {
            &[][..]
        } else {
            &secrets[index.index(secrets.len())][..]
        };
        sign(secret, body)
    };
    match header {
        Header::Missing => None,
        Header::Text(text) => Some(text.clone()),
        Header::Digits(digits) => Some(format!("sha256={digits}")),
        Header::Signed(index) => Some(signed(index)),
        Header::Foreign(key) => Some(sign(key, body)),
        Header::Flipped(index, digit) => {
            let mut text = signed(index).into_bytes();
            let at = "sha256=".len() + digit.index(64);
            text[at] = if text[at] == b'0' { b'1' } else { b'0' };
            Some(String::from_utf8(text).expect("hex is ASCII"))
        }
        Header::Upper(index) => Some(signed(index).to_uppercase().replace("SHA256=", "sha256=")),
    }
}

/// The test's own reading of the header: lowercase `sha256=`, then the hex HMAC of the body
/// under one of the secrets, in any case.
fn should_verify(secrets: &[Vec<u8>], header: Option<&str>, body: &[u8]) -> bool {
    let Some(digits) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    secrets
        .iter()
        .any(|secret| digits.eq_ignore_ascii_case(&sign(secret, body)["sha256=".len()..]))
}

proptest! {
    #![proptest_config(config())]

    /// Verification answers every header with `Ok` exactly when it is the body's HMAC under a
    /// configured secret, and never panics.
    #[test]
    fn verify_never_panics_and_accepts_only_the_right_hmac(
        secrets in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..4),
        body in prop::collection::vec(any::<u8>(), 0..512),
        header in header(),
    ) {
        let header = header_text(&header, &secrets, &body);
        let result = verify(&secrets, header.as_deref(), &body);
        if secrets.is_empty() {
            prop_assert_eq!(result.clone(), Err(SignatureError::NoSecret));
        } else {
            prop_assert_eq!(
                result.is_ok(),
                should_verify(&secrets, header.as_deref(), &body),
                "{:?}", result
            );
        }
        if let Err(error) = result {
            prop_assert!(!error.to_string().is_empty());
        }
    }

    /// Parsing answers every delivery with an event or an error naming what is wrong; what it
    /// reads equals what the JSON says.
    #[test]
    fn parse_never_panics_and_reads_what_the_json_says(delivery in delivery()) {
        let result = parse(&delivery.event, &delivery.body);
        match (&result, &delivery.json) {
            (Err(PayloadError::NotJson(message)), _) => prop_assert!(!message.is_empty()),
            (Err(PayloadError::Field { path, message, .. }), _) => {
                prop_assert!(!message.is_empty());
                prop_assert!(!path.is_empty());
            }
            (Ok(Event::Deployment(d)), Some(json)) => {
                agrees(json, "/deployment/id", d.github_id.into())?;
                agrees(json, "/deployment/sha", d.sha.as_str().into())?;
                agrees(json, "/deployment/ref", d.git_ref.as_str().into())?;
                agrees(json, "/deployment/task", d.task.as_str().into())?;
                agrees(json, "/deployment/environment", d.environment.as_str().into())?;
                agrees(json, "/repository/full_name", d.repository.as_str().into())?;
            }
            (Ok(Event::Push(moved)), Some(json)) => {
                agrees(json, "/ref", format!("refs/heads/{}", moved.branch).into())?;
                agrees(json, "/after", moved.sha.as_str().into())?;
            }
            (Ok(Event::PullRequestClosed { head_ref, number, .. }), Some(json)) => {
                agrees(json, "/number", (*number).into())?;
                agrees(json, "/pull_request/head/ref", head_ref.as_str().into())?;
            }
            _ => {}
        }
    }
}

/// Where the JSON has a value at `pointer`, it is the one parsed. (serde also reads a struct
/// written as the array of its fields, `"head": ["main"]`, which has no `/head/ref`.)
fn agrees(json: &Value, pointer: &str, parsed: Value) -> Result<(), TestCaseError> {
    if let Some(value) = json.pointer(pointer) {
        prop_assert_eq!(value, &parsed, "at {}", pointer);
    }
    Ok(())
}

/// One delivery: the `X-GitHub-Event` value, the body, and the JSON it was written from.
#[derive(Debug, Clone)]
struct Delivery {
    event: String,
    body: Vec<u8>,
    json: Option<Value>,
}

/// The real deliveries in `tests/fixtures/github/webhooks/`, by event, plus a closed pull
/// request built on the deployment's repository.
fn fixtures() -> &'static [(&'static str, Value, Vec<String>)] {
    static FIXTURES: OnceLock<Vec<(&'static str, Value, Vec<String>)>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let read = |bytes: &[u8]| -> Value { serde_json::from_slice(bytes).expect("fixture") };
        let mut fixtures = vec![
            (
                "deployment",
                read(include_bytes!(
                    "../../tests/fixtures/github/webhooks/deployment.created.json"
                )),
            ),
            (
                "deployment",
                read(include_bytes!(
                    "../../tests/fixtures/github/webhooks/deployment.created.with-installation.json"
                )),
            ),
            (
                "deployment_status",
                read(include_bytes!(
                    "../../tests/fixtures/github/webhooks/deployment_status.created.json"
                )),
            ),
            (
                "ping",
                read(include_bytes!(
                    "../../tests/fixtures/github/webhooks/ping.event.with-app_id.json"
                )),
            ),
            (
                "check_suite",
                read(include_bytes!(
                    "../../tests/fixtures/github/webhooks/check_suite.completed.json"
                )),
            ),
        ];
        let mut push = read(include_bytes!(
            "../../tests/fixtures/github/webhooks/push.event.json"
        ));
        fixtures.push(("push", push.clone()));
        // GitHub's example push deletes a tag; this one moves a branch.
        push["ref"] = "refs/heads/main".into();
        push["deleted"] = false.into();
        fixtures.push(("push", push));
        let deployment = &fixtures[0].1;
        let pull_request = serde_json::json!({
            "action": "closed",
            "number": 7,
            "pull_request": {"number": 7, "merged": true, "head": {"ref": "feature", "sha": "f95f852bd8fca8fcc58a9a2d6c842781e32a215e"}},
            "repository": deployment["repository"].clone(),
            "sender": deployment["sender"].clone(),
        });
        fixtures.push(("pull_request", pull_request));
        fixtures
            .into_iter()
            .map(|(event, json)| {
                let mut paths = Vec::new();
                json_paths(&json, String::new(), &mut paths);
                (event, json, paths)
            })
            .collect()
    })
}

/// Every JSON pointer in `value`, the root included.
fn json_paths(value: &Value, at: String, paths: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                let escaped = key.replace('~', "~0").replace('/', "~1");
                json_paths(inner, format!("{at}/{escaped}"), paths);
            }
        }
        Value::Array(items) => {
            for (i, inner) in items.iter().enumerate() {
                json_paths(inner, format!("{at}/{i}"), paths);
            }
        }
        _ => {}
    }
    paths.push(at);
}

/// One change to a delivery's JSON, at a path chosen by `Index`.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(Index, Value),
    Remove(Index),
    /// Replaces the value with JSON nested this deep (as raw text, spliced in after).
    Deep(Index, usize, bool),
    /// Sets `action` to one of the ones Dropship reads, or anything.
    Action(String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => (any::<Index>(), json_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        2 => any::<Index>().prop_map(Mutation::Remove),
        1 => (any::<Index>(), 1..300usize, any::<bool>()).prop_map(|(i, d, o)| Mutation::Deep(i, d, o)),
        1 => prop_oneof![
            proptest::sample::select(&["created", "closed", "completed", "opened", ""][..])
                .prop_map(str::to_string),
            nasty_string(),
        ]
        .prop_map(Mutation::Action),
    ]
}

/// A marker replaced by deep JSON after serializing.
const DEEP: &str = "\u{1}deep\u{1}";

fn mutated_fixture() -> impl Strategy<Value = Delivery> {
    let event = prop_oneof![
        8 => Just(None),
        1 => proptest::sample::select(
            &["deployment", "ping", "push", "pull_request", "check_suite", "installation"][..]
        )
        .prop_map(|e| Some(e.to_string())),
        1 => nasty_string().prop_map(Some),
    ];
    (
        any::<Index>(),
        event,
        prop::collection::vec(mutation(), 1..5),
    )
        .prop_map(|(which, event, mutations)| {
            let fixtures = fixtures();
            let (fixture_event, json, paths) = &fixtures[which.index(fixtures.len())];
            let mut json = json.clone();
            let mut deep = None;
            for mutation in mutations {
                match mutation {
                    Mutation::Replace(at, value) => {
                        if let Some(slot) = json.pointer_mut(&paths[at.index(paths.len())]) {
                            *slot = value;
                        }
                    }
                    Mutation::Remove(at) => remove(&mut json, &paths[at.index(paths.len())]),
                    Mutation::Deep(at, depth, object) => {
                        if let Some(slot) = json.pointer_mut(&paths[at.index(paths.len())]) {
                            *slot = Value::String(DEEP.into());
                            deep = Some(deep_json(depth, object));
                        }
                    }
                    Mutation::Action(action) => {
                        if let Some(map) = json.as_object_mut() {
                            map.insert("action".into(), Value::String(action));
                        }
                    }
                }
            }
            let mut body = serde_json::to_string(&json).expect("JSON serializes");
            let json = match deep {
                Some(deep)
                    if body.contains(&format!("\"{}\"", DEEP.replace('\u{1}', "\\u0001"))) =>
                {
                    body = body.replacen(
                        &format!("\"{}\"", DEEP.replace('\u{1}', "\\u0001")),
                        &deep,
                        1,
                    );
                    None
                }
                _ => Some(json),
            };
            Delivery {
                event: event.unwrap_or_else(|| fixture_event.to_string()),
                body: body.into_bytes(),
                json,
            }
        })
}

fn remove(json: &mut Value, pointer: &str) {
    let Some((parent, key)) = pointer.rsplit_once('/') else {
        return;
    };
    let key = key.replace("~1", "/").replace("~0", "~");
    match json.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.remove(&key);
        }
        Some(Value::Array(items)) => {
            if let Ok(i) = key.parse::<usize>() {
                if i < items.len() {
                    items.remove(i);
                }
            }
        }
        _ => {}
    }
}

/// Bytes that are not (quite) JSON: arbitrary, a fixture cut short or with one byte changed,
/// or nesting far past any sane depth.
fn raw_body() -> impl Strategy<Value = Vec<u8>> {
    let fixture_bytes = |which: Index| {
        let fixtures = fixtures();
        serde_json::to_vec(&fixtures[which.index(fixtures.len())].1).expect("JSON serializes")
    };
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        (any::<Index>(), any::<Index>()).prop_map(move |(which, cut)| {
            let mut bytes = fixture_bytes(which);
            bytes.truncate(cut.index(bytes.len() + 1));
            bytes
        }),
        (any::<Index>(), any::<Index>(), any::<u8>()).prop_map(move |(which, at, byte)| {
            let mut bytes = fixture_bytes(which);
            let at = at.index(bytes.len());
            bytes[at] = byte;
            bytes
        }),
        (1..100_000usize, any::<bool>())
            .prop_map(|(depth, object)| deep_json(depth, object).into_bytes()),
    ]
}

fn delivery() -> impl Strategy<Value = Delivery> {
    prop_oneof![
        4 => mutated_fixture(),
        1 => (
            proptest::sample::select(&["deployment", "ping", "push", "pull_request", "check_suite"][..]),
            raw_body(),
        )
            .prop_map(|(event, body)| Delivery {
                event: event.to_string(),
                body,
                json: None,
            }),
    ]
}
