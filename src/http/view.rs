//! What every HTML page shares: the document and its navigation, state badges, safe links and
//! paths, times, and the JSON island a page's script reads. Escaping is maud's; what maud cannot
//! know (which URLs may be links, how a path segment is encoded, how JSON sits inside
//! `<script>`) is decided here, once.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::auth::User;
use crate::config::Role;
use crate::store::Millis;

pub(super) fn document(title: &str, nav: Markup, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — dropship" }
                link rel="stylesheet" href=(super::assets::url("style.css"));
            }
            body { (nav) main { (body) } }
        }
    }
}

/// A page for a signed-in user, with the navigation, and a banner while something needs the
/// operator (status delivery paused).
pub(super) fn layout(
    state: &super::AppState,
    title: &str,
    user: &User,
    active: &str,
    body: Markup,
) -> Markup {
    let body = match state.delivery.reason() {
        None => body,
        Some(reason) => html! {
            div.banner role="alert" { strong { "Status delivery to GitHub is paused. " } (reason) }
            (body)
        },
    };
    let link = |href: &str, name: &str, label: &str| {
        html! { a href=(href) class=[(active == name).then_some("on")] { (label) } }
    };
    let nav = html! {
        nav {
            strong { "dropship" }
            (link("/", "deployments", "Deployments"))
            (link("/environments", "environments", "Environments"))
            (link("/servers", "servers", "Servers"))
            (link("/apps", "apps", "Apps"))
            @if user.may(Role::Admin) { (link("/audit", "audit", "Audit")) }
            span.who {
                span #user { (user.name) } " (" (user.role.as_str()) ") "
                form method="post" action="/logout" { button type="submit" { "Sign out" } }
            }
        }
    };
    document(title, nav, body)
}

/// A page without navigation: one deployment opened from its `log_url`.
pub(super) fn bare(title: &str, body: Markup) -> Markup {
    document(title, html! {}, body)
}

pub(super) fn state_badge(state: &str) -> Markup {
    html! { span class={"badge " (state_class(state))} { (state) } }
}

/// `url` when it is an absolute `http` or `https` URL, so it may be a link; anything else
/// (`javascript:`, `data:`, relative) is shown as text only.
pub(super) fn web_url(url: &str) -> Option<&str> {
    let uri: axum::http::Uri = url.parse().ok()?;
    let web = matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some();
    web.then_some(url)
}

/// A link to `url` when it is a web URL, else the text of it.
pub(super) fn url_link(url: &str) -> Markup {
    html! {
        @match web_url(url) {
            Some(url) => a href=(url) rel="noreferrer" { (url) },
            None => code { (url) },
        }
    }
}

/// Page state for the page's script: a `<script type="application/json">` element, whose
/// JSON has `<`, `>` and `&` escaped (`\u003c`...), so no text in it can end the element or
/// open a comment.
pub(super) fn data_island(value: &serde_json::Value) -> Markup {
    let json = serde_json::to_string(value).expect("JSON values serialize");
    let mut escaped = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => escaped.push_str("\\u003c"),
            '>' => escaped.push_str("\\u003e"),
            '&' => escaped.push_str("\\u0026"),
            '\u{2028}' => escaped.push_str("\\u2028"),
            '\u{2029}' => escaped.push_str("\\u2029"),
            c => escaped.push(c),
        }
    }
    html! { script #page-state type="application/json" { (PreEscaped(escaped)) } }
}

/// The CSS class of a deployment or step state.
pub(super) fn state_class(state: &str) -> &'static str {
    match state {
        "success" => "ok",
        "failure" | "error" | "timed_out" => "bad",
        "running" => "run",
        _ => "wait",
    }
}

pub(super) fn time(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}
