//! The one error type at the HTTP edge: 4xx say exactly what is wrong and are not logged;
//! 5xx say little and are logged once.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug)]
pub enum HttpError {
    /// A client error with the message to show.
    Client(StatusCode, String),
    Internal(anyhow::Error),
}

impl HttpError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> HttpError {
        HttpError::Client(status, message.into())
    }

    pub fn not_found(what: impl Into<String>) -> HttpError {
        HttpError::Client(StatusCode::NOT_FOUND, what.into())
    }
}

impl From<anyhow::Error> for HttpError {
    fn from(error: anyhow::Error) -> Self {
        HttpError::Internal(error)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        match self {
            HttpError::Client(status, message) => {
                (status, Json(serde_json::json!({ "error": message }))).into_response()
            }
            HttpError::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "request failed");
                let body =
                    Json(serde_json::json!({ "error": "internal error; see the dropship log" }));
                (StatusCode::INTERNAL_SERVER_ERROR, body).into_response()
            }
        }
    }
}
