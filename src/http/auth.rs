//! Who is asking: a user from the config, by bearer token (the API) or by session cookie (the
//! pages, after the login form). Tokens are kept only as SHA-256 hashes; sessions only as the
//! hash of their random id. A deployment's own capability token (in its `log_url`) opens just
//! that deployment's page and log, and is checked where those are served.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use sha2::{Digest, Sha256};

use super::{AppState, HttpError, same};
use crate::config::Role;
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
const NEXT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

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
            .engine
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
        for user in &self.engine.config.api.users {
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
        self.engine
            .config
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
        if let Err(error) = self.engine.store.audit(&entry).await {
            tracing::error!(error = format!("{error:#}"), "writing the audit log");
        }
    }

    /// Starts a session for `user`: the cookie to set.
    pub(super) async fn start_session(&self, user: &User) -> anyhow::Result<Cookie<'static>> {
        let id = crate::store::new_token();
        let ttl = self.engine.config.api.session_ttl;
        self.engine
            .store
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
            .secure(self.engine.config.public_url().starts_with("https://"))
            .max_age(cookie::time::Duration::seconds(ttl.as_secs() as i64))
            .build())
    }

    /// Whether a form post comes from these pages: its `Origin` (which browsers send with
    /// every POST) must be this server's. Together with `SameSite=Lax` that stops cross-site
    /// form posts.
    pub(super) fn same_origin(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
            // Not a browser (curl, the CLI): no ambient cookie risk from a cross-site page.
            return true;
        };
        let public = self.engine.config.public_url().trim_end_matches('/');
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        origin == public
            || host.is_some_and(|host| {
                origin == format!("http://{host}") || origin == format!("https://{host}")
            })
    }
}
