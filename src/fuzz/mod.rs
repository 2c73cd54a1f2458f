//! Fuzzing on stable Rust: proptest generators that feed the pure parsers (`webhook`,
//! `manifest`) hostile input and check that they answer with values, never a panic.
//!
//! Each target runs [`DEFAULT_CASES`] inputs in the normal test run (`cargo test --lib fuzz`);
//! `PROPTEST_CASES=N` runs N per target instead (see docs/security.md for the long run).
//! Generators are structure-aware: real GitHub deliveries with fields replaced by arbitrary
//! JSON, manifests built from a grammar of valid pieces mixed with the strings below.

mod manifest;
mod webhook;

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::Value;

/// Inputs per target in the normal test run: a few seconds for all targets in debug.
const DEFAULT_CASES: u32 = 2_000;

/// The runner's configuration: [`DEFAULT_CASES`], or `PROPTEST_CASES` when set. A failure is
/// shrunk and printed; nothing is written into the source tree.
fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Strings that have broken shells, YAML, HTML, paths and number parsers before.
const HOSTILE: &[&str] = &[
    "$(touch F)",
    "`touch F`",
    "'; touch F; '",
    "\"; touch F; \"",
    "\ntouch F",
    "x\ntouch F\n",
    "${IFS}touch${IFS}F",
    "$IFS",
    ";touch$IFS'F'",
    "\\",
    "'",
    "\"",
    "''",
    "EOF",
    "\nEOF\ntouch F\n",
    "</script><script>document.title='pwned'</script>",
    "<!--",
    "javascript:alert(1)",
    "../../../etc/passwd",
    "..",
    "/",
    "/var/run/docker.sock:/var/run/docker.sock",
    "/:/host",
    "18446744073709551615s",
    "18446744073709551616s",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "340282366920938463463374607431768211456",
    "584542046091y",
    "99999999999999999999999999h",
    "1ns",
    "0s",
    "-1s",
    "1e400",
    "-0",
    "NaN",
    ".nan",
    ".inf",
    "-.inf",
    "inf",
    "4294967296",
    "65536",
    "0",
    "-1",
    "0%",
    "101%",
    "4294967296%",
    "%",
    "~",
    "null",
    "true",
    "&a",
    "*a",
    "!!binary",
    "!!str",
    "<<",
    "? ",
    "{",
    "}",
    "[",
    "]",
    ": ",
    "- ",
    "#",
    "|",
    ">",
    "---",
    "...",
    "\0",
    "\t",
    "\r",
    "\r\n",
    "\u{85}",
    "\u{2028}",
    "\u{feff}",
    "\u{202e}",
    "é",
    "ǅ",
    "日本語",
    "🚀",
    "\u{10ffff}",
    "${{",
    "}}",
    "${{}}",
    "${{ }}",
    "${{ deployment.ref }}",
    "${{ deployment.payload.a }}",
    "${{ deployment.payload. }}",
    "${{ deployment.payload.a..b }}",
    "${{ deployment.ref",
    "${{ ${{ deployment.ref }} }}",
    "$${{ deployment.sha }}",
    "*",
    "**",
    "[!a]",
    "[a-",
    "{a,b}",
    "a*b*c*d*e*f*g*h*",
    "dropship.managed",
    "DROPSHIP_X",
    "-",
    "_",
    "a:b:c:d",
    "127.0.0.1::8080",
    ":8080",
    "80:",
    "8080/sctp",
    "0.0.0.0:80:80/udp",
    "@sha256:",
];

/// One of [`HOSTILE`].
fn hostile() -> impl Strategy<Value = String> {
    proptest::sample::select(HOSTILE).prop_map(str::to_string)
}

/// A string that is hostile, arbitrary, or hostile pieces glued to ordinary text.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => hostile(),
        2 => any::<String>(),
        1 => "[a-z0-9._-]{0,12}",
        2 => prop::collection::vec(prop_oneof![hostile(), "[a-z ]{0,6}"], 1..4)
            .prop_map(|parts| parts.concat()),
        1 => (hostile(), 1..64usize).prop_map(|(s, n)| s.repeat(n)),
    ]
}

/// Arbitrary JSON: every kind of scalar (huge and negative numbers included), nested arrays
/// and objects whose keys are likely to be the ones Dropship reads.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        nasty_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((json_key(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// Keys Dropship looks for in payloads and deliveries, and some it does not.
fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(&[
            "image", "port", "env", "cmd", "version", "a", "b", "nested", "ref", "sha", "id",
            "action", "login", "full_name", "fork", "name", "head_branch", "payload",
        ][..])
        .prop_map(str::to_string),
        1 => nasty_string(),
    ]
}

/// JSON nested `depth` levels deep (arrays or objects), to find stack exhaustion.
fn deep_json(depth: usize, object: bool) -> String {
    let (open, close) = if object {
        (r#"{"a":"#, "}")
    } else {
        ("[", "]")
    };
    format!("{}1{}", open.repeat(depth), close.repeat(depth))
}
