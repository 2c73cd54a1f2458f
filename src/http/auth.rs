//! Who is asking: a user from the config, by bearer token (the API) or by session cookie (the
//! pages, after the login form). Tokens are kept only as SHA-256 hashes; sessions only as the
//! hash of their random id. A deployment's own capability token (in its `log_url`) opens just
//! that deployment's page and log, and is checked where those are served.
//! Failed sign-ins are throttled per name and client address ([`SignInThrottle`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use sha2::{Digest, Sha256};

use super::{AppState, HttpError, same};
use crate::config::{ApiSection, Role};
use crate::store::{AuditEntry, now_ms};

/// The session cookie's name.
pub(super) const SESSION_COOKIE: &str = "dropship_session";

/// Hex SHA-256 of a token or session id: what the config and the store keep.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A signed-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub role: Role,
}

impl User {
    pub(super) fn may(&self, role: Role) -> bool {
        self.role >= role
    }

    /// 403 unless the user has `role` (or a greater one).
    pub(super) fn require(&self, role: Role) -> Result<(), HttpError> {
        if self.may(role) {
            Ok(())
        } else {
            Err(HttpError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "this needs the {} role; {} is a {}",
                    role.as_str(),
                    self.name,
                    self.role.as_str()
                ),
            ))
        }
    }
}

/// The caller of a request, if it proved who it is.
#[derive(Debug, Clone)]
pub struct Caller(pub Option<User>);

impl Caller {
    /// The user for an API call that needs `role`: 401 without a user, 403 with too small a
    /// role.
    pub(super) fn api(self, role: Role) -> Result<User, HttpError> {
        let Some(user) = self.0 else {
            return Err(HttpError::new(
                StatusCode::UNAUTHORIZED,
                "this API needs `Authorization: Bearer <token>` with a token of a user in [[api.users]]",
            ));
        };
        user.require(role)?;
        Ok(user)
    }

    /// The user for a page that needs `role`: without one, a redirect to the login form that
    /// comes back to `back`.
    pub(super) fn page(self, role: Role, back: &str) -> Result<User, Refusal> {
        let Some(user) = self.0 else {
            return Err(Refusal::SignIn(back.to_string()));
        };
        user.require(role).map_err(Refusal::Denied)?;
        Ok(user)
    }
}

/// Why a page is not shown.
#[derive(Debug)]
pub(super) enum Refusal {
    /// Not signed in: to the login form, then back to this path.
    SignIn(String),
    Denied(HttpError),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::SignIn(back) => {
                let next = form_urlencoded_component(&back);
                Redirect::to(&format!("/login?next={next}")).into_response()
            }
            Refusal::Denied(error) => error.into_response(),
        }
    }
}

/// What a `next` query value escapes: all but unreserved characters and `/`.
const NEXT: &percent_encoding::AsciiSet = &super::paths::SEGMENT.remove(b'/');

fn form_urlencoded_component(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, NEXT).to_string()
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, HttpError> {
        if let Some(token) = bearer(&parts.headers) {
            // A wrong bearer token is an error, not an anonymous call.
            return match state.user_by_token(token) {
                Some(user) => Ok(Caller(Some(user))),
                None => Err(HttpError::new(
                    StatusCode::UNAUTHORIZED,
                    "the bearer token matches no user in [[api.users]]",
                )),
            };
        }
        let jar = CookieJar::from_headers(&parts.headers);
        let Some(cookie) = jar.get(SESSION_COOKIE) else {
            return Ok(Caller(None));
        };
        let Some(name) = state
            .store
            .session_user(&hash_token(cookie.value()), now_ms())
            .await?
        else {
            return Ok(Caller(None));
        };
        // The config decides the role now: a user removed from it is signed out.
        Ok(Caller(state.user_named(&name)))
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

impl AppState {
    /// The user whose token this is.
    pub(super) fn user_by_token(&self, token: &str) -> Option<User> {
        let hash = hash_token(token);
        // Compare with every user, in constant time each, so timing tells nothing.
        let mut found = None;
        for user in &self.config.api.users {
            if same(&user.token_sha256.to_ascii_lowercase(), &hash) && found.is_none() {
                found = Some(User {
                    name: user.name.clone(),
                    role: user.role,
                });
            }
        }
        found
    }

    fn user_named(&self, name: &str) -> Option<User> {
        self.config
            .api
            .users
            .iter()
            .find(|u| u.name == name)
            .map(|u| User {
                name: u.name.clone(),
                role: u.role,
            })
    }

    /// Writes one audit entry; a failure to write it is logged, not fatal to the action.
    pub(super) async fn audit(&self, actor: &str, action: &str, target: &str, detail: &str) {
        let entry = AuditEntry {
            at: now_ms(),
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            detail: detail.to_string(),
        };
        tracing::info!(actor, action, target, detail, "audit");
        if let Err(error) = self.store.audit(&entry).await {
            tracing::error!(error = format!("{error:#}"), "writing the audit log");
        }
    }

    /// Starts a session for `user`: the cookie to set.
    pub(super) async fn start_session(&self, user: &User) -> anyhow::Result<Cookie<'static>> {
        let id = crate::store::new_token();
        let ttl = self.config.api.session_ttl;
        self.store
            .create_session(
                &hash_token(&id),
                &user.name,
                now_ms() + ttl.as_millis() as i64,
            )
            .await?;
        Ok(Cookie::build((SESSION_COOKIE, id))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(self.config.public_url().starts_with("https://"))
            .max_age(cookie::time::Duration::seconds(ttl.as_secs() as i64))
            .build())
    }
}

/// The longest name kept from a refused sign-in (in the throttle and the audit log).
const NAME_CHARS: usize = 64;

/// At most this many refused sign-ins are written to the audit log per `login_window`; past
/// it one entry says so and the rest are only counted by the throttle.
pub(super) const REFUSED_AUDIT_PER_WINDOW: u32 = 1000;

/// A name from the sign-in form as it is kept: trimmed, at most 64 characters.
pub(super) fn shown_name(name: &str) -> String {
    name.trim().chars().take(NAME_CHARS).collect()
}

/// What failed sign-ins are counted by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Name(String),
    Address(IpAddr),
    /// One name from one address: its first failure in a window is audited.
    Pair(String, Option<IpAddr>),
}

#[derive(Debug, Clone, Copy)]
struct Window {
    since: Instant,
    failures: u32,
}

/// Failed sign-ins per name and per client address (IPv6 by /64), each counted in a window
/// of `login_window` from its first failure: at the limit, sign-ins for that name or from that
/// address are refused (429) until the window ends. Holds at most `login_throttle_entries`
/// keys: expired windows go first, then the oldest.
#[derive(Debug)]
pub struct SignInThrottle {
    per_name: u32,
    per_address: u32,
    window: Duration,
    capacity: usize,
    state: Mutex<ThrottleState>,
}

#[derive(Debug)]
struct ThrottleState {
    keys: HashMap<Key, Window>,
    /// Refused sign-ins audited in the current global window.
    audited: Window,
}

/// What one failed sign-in means for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// The first failure of this name from this address in the window.
    First,
    /// This failure reached a limit: the name or address is throttled now.
    Throttled { failures: u32 },
    /// The audit cap for this window was reached with this failure.
    AuditCapReached,
    /// Counted only.
    Counted,
}

impl Failure {
    /// The audit entry's detail, if this failure gets one.
    pub(super) fn audit_detail(&self, address: Option<IpAddr>) -> Option<String> {
        let from = address.map_or_else(String::new, |a| format!(" from {a}"));
        match self {
            Failure::First => Some(format!(
                "wrong name or token{from}; further failures of this name from this address in this window are counted, not recorded"
            )),
            Failure::Throttled { failures } => Some(format!(
                "{failures} failed sign-ins{from}: throttled until the window ends"
            )),
            Failure::AuditCapReached => Some(format!(
                "{REFUSED_AUDIT_PER_WINDOW} refused sign-ins recorded in this window; further ones are not recorded until it ends"
            )),
            Failure::Counted => None,
        }
    }
}

/// IPv6 addresses count by their /64: one host usually holds a whole /64.
fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

impl SignInThrottle {
    pub fn new(config: &ApiSection) -> SignInThrottle {
        SignInThrottle {
            per_name: config.login_failures_per_name,
            per_address: config.login_failures_per_address,
            window: config.login_window,
            capacity: config.login_throttle_entries,
            state: Mutex::new(ThrottleState {
                keys: HashMap::new(),
                audited: Window {
                    since: Instant::now(),
                    failures: 0,
                },
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ThrottleState> {
        // The state stays consistent whatever panicked while holding it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn keys(name: &str, address: Option<IpAddr>) -> [Option<Key>; 3] {
        let name = shown_name(name);
        let address = address.map(address_key);
        [
            Some(Key::Name(name.clone())),
            address.map(Key::Address),
            Some(Key::Pair(name, address)),
        ]
    }

    fn limit(&self, key: &Key) -> u32 {
        match key {
            Key::Name(_) => self.per_name,
            Key::Address(_) => self.per_address,
            Key::Pair(..) => u32::MAX,
        }
    }

    /// `Err(wait)` while `name` or `address` is throttled: how long until it may try again.
    pub(super) fn check(
        &self,
        name: &str,
        address: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), Duration> {
        let state = self.lock();
        let mut wait = Duration::ZERO;
        for key in Self::keys(name, address).into_iter().flatten() {
            if let Some(window) = state.keys.get(&key) {
                let ends = window.since + self.window;
                if window.failures >= self.limit(&key) && ends > now {
                    wait = wait.max(ends - now);
                }
            }
        }
        if wait.is_zero() { Ok(()) } else { Err(wait) }
    }

    /// Counts a failed sign-in.
    pub(super) fn failed(&self, name: &str, address: Option<IpAddr>, now: Instant) -> Failure {
        let mut state = self.lock();
        let mut first = false;
        let mut throttled = None;
        for key in Self::keys(name, address).into_iter().flatten() {
            // A name or an address is throttled; their pair only tells first failures apart.
            let limited = !matches!(key, Key::Pair(..));
            let limit = self.limit(&key);
            let window = self.count(&mut state, key, now);
            if limited && window == limit {
                throttled = Some(throttled.unwrap_or(0).max(window));
            }
            if !limited && window == 1 {
                first = true;
            }
        }
        if !first && throttled.is_none() {
            return Failure::Counted;
        }
        // The audit log's own cap, over all names and addresses.
        if state.audited.since + self.window <= now {
            state.audited = Window {
                since: now,
                failures: 0,
            };
        }
        state.audited.failures += 1;
        match state.audited.failures {
            n if n < REFUSED_AUDIT_PER_WINDOW => match throttled {
                Some(failures) => Failure::Throttled { failures },
                None => Failure::First,
            },
            n if n == REFUSED_AUDIT_PER_WINDOW => Failure::AuditCapReached,
            _ => Failure::Counted,
        }
    }

    /// Adds one failure to `key`'s window (a new one if it expired): the failures in it now.
    fn count(&self, state: &mut ThrottleState, key: Key, now: Instant) -> u32 {
        if !state.keys.contains_key(&key) && state.keys.len() >= self.capacity {
            let window = self.window;
            state.keys.retain(|_, w| w.since + window > now);
            if state.keys.len() >= self.capacity {
                let oldest = state
                    .keys
                    .iter()
                    .min_by_key(|(_, w)| w.since)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    state.keys.remove(&oldest);
                }
            }
        }
        let window = state.keys.entry(key).or_insert(Window {
            since: now,
            failures: 0,
        });
        if window.since + self.window <= now {
            *window = Window {
                since: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
        window.failures
    }

    /// A sign-in succeeded: the name's failures are forgotten (the address's are not).
    pub(super) fn succeeded(&self, name: &str, address: Option<IpAddr>) {
        let mut state = self.lock();
        let name = shown_name(name);
        state.keys.remove(&Key::Name(name.clone()));
        state
            .keys
            .remove(&Key::Pair(name, address.map(address_key)));
    }

    /// Names and addresses remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(per_name: u32, per_address: u32, entries: usize) -> SignInThrottle {
        SignInThrottle::new(&ApiSection {
            login_failures_per_name: per_name,
            login_failures_per_address: per_address,
            login_window: Duration::from_secs(60),
            login_throttle_entries: entries,
            ..ApiSection::default()
        })
    }

    #[test]
    fn a_name_is_throttled_after_its_failures_until_the_window_ends() {
        let throttle = throttle(3, 100, 100);
        let address = Some("192.0.2.1".parse().unwrap());
        let start = Instant::now();
        assert_eq!(throttle.failed("dee", address, start), Failure::First);
        assert_eq!(throttle.failed("dee", address, start), Failure::Counted);
        assert_eq!(throttle.check("dee", address, start), Ok(()));
        assert_eq!(
            throttle.failed("dee", address, start),
            Failure::Throttled { failures: 3 }
        );
        assert_eq!(
            throttle.check("dee", address, start + Duration::from_secs(20)),
            Err(Duration::from_secs(40))
        );
        // From anywhere, and whatever the token: the name is throttled.
        assert!(throttle.check("dee", None, start).is_err());
        assert_eq!(throttle.check("vic", address, start), Ok(()));
        assert_eq!(
            throttle.check("dee", address, start + Duration::from_secs(60)),
            Ok(())
        );
    }

    #[test]
    fn an_address_is_throttled_across_names() {
        let throttle = throttle(100, 3, 100);
        let address: Option<IpAddr> = Some("2001:db8::1".parse().unwrap());
        let neighbour: Option<IpAddr> = Some("2001:db8::2".parse().unwrap());
        let now = Instant::now();
        for name in ["a", "b"] {
            assert_eq!(throttle.failed(name, address, now), Failure::First);
        }
        assert_eq!(
            throttle.failed("c", neighbour, now),
            Failure::Throttled { failures: 3 },
            "the same /64"
        );
        assert!(throttle.check("d", address, now).is_err());
        assert_eq!(
            throttle.check("d", Some("2001:db9::1".parse().unwrap()), now),
            Ok(())
        );
    }

    #[test]
    fn the_throttle_holds_at_most_its_entries() {
        let throttle = throttle(5, 5, 10);
        let now = Instant::now();
        for n in 0..1000u32 {
            let address = Some(IpAddr::from(n.to_be_bytes()));
            throttle.failed(
                &format!("name-{n}"),
                address,
                now + Duration::from_millis(n.into()),
            );
            assert!(throttle.len() <= 10, "{} entries", throttle.len());
        }
    }

    #[test]
    fn refused_sign_ins_are_audited_once_per_name_address_and_window_up_to_a_cap() {
        let throttle = throttle(u32::MAX, u32::MAX, 100_000);
        let now = Instant::now();
        let address = Some("192.0.2.1".parse().unwrap());
        let audited = (0..50)
            .filter(|_| throttle.failed("dee", address, now) != Failure::Counted)
            .count();
        assert_eq!(audited, 1);
        let mut audited = 0;
        for n in 0..(2 * REFUSED_AUDIT_PER_WINDOW) {
            if throttle.failed(&format!("n{n}"), address, now) != Failure::Counted {
                audited += 1;
            }
        }
        assert_eq!(audited, REFUSED_AUDIT_PER_WINDOW - 1, "the cap, with dee's");
        // A new window audits again.
        let later = now + Duration::from_secs(61);
        assert_eq!(throttle.failed("dee", address, later), Failure::First);
    }

    #[test]
    fn a_long_name_is_cut() {
        assert_eq!(shown_name(&"x".repeat(1000)).len(), NAME_CHARS);
    }
}
