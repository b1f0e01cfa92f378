//! API errors: `{"error": {"code", "message"}}` with a fitting status, and
//! the JSON body extractor that produces them for malformed input.

use crate::core::EngineError;
use crate::runtime::store::StoreError;
use crate::runtime::NodeError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

/// An API error.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 bad input.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 500: the node answered something it should not have.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// 404 unknown id.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let message = e.to_string();
        match e {
            NodeError::Engine(EngineError::Invalid(_)) => Self::bad_request(message),
            NodeError::Engine(EngineError::NotFound { .. }) => Self::not_found(message),
            NodeError::Engine(EngineError::Conflict(_)) => {
                Self::new(StatusCode::CONFLICT, "conflict", message)
            }
            NodeError::Engine(EngineError::StaleFence { .. }) => {
                Self::new(StatusCode::CONFLICT, "stale_fence", message)
            }
            NodeError::Engine(EngineError::TooLarge(_)) => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
            }
            NodeError::Store(StoreError::Full { .. }) => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                message,
            ),
            NodeError::Store(StoreError::Io { .. })
            | NodeError::Store(_)
            | NodeError::Engine(EngineError::NotDurable(_)) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                message,
            ),
            NodeError::Identity(_) | NodeError::Net(_) | NodeError::Stopped => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message)
            }
        }
    }
}

/// A JSON request body. Its rejections are [`ApiError`]s: 415 unless the
/// content type is `application/json` (a web page can send `text/plain` to
/// any address without asking, but not JSON), 413 past the body limit, 400
/// for anything that is not the expected JSON.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON, sent with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "request body is larger than max_body_bytes",
                )
            } else {
                ApiError::bad_request(format!("cannot read request body: {e}"))
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}
