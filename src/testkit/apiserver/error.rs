//! Refusals as the API server words them: an HTTP code, a reason kube recognises, a `Status` body.

use serde_json::{Value, json};

use super::route::Target;

/// A refusal as the API server answers it: an HTTP code and a `Status` body.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into() }
    }

    pub fn not_found(t: &Target, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} {name:?} not found", t.qualified()))
    }

    pub fn conflict(t: &Target, name: &str, why: &str) -> Self {
        Self::new(409, "Conflict", format!("Operation cannot be fulfilled on {} {name:?}: {why}", t.qualified()))
    }

    /// An answer with `code` and the reason the API server gives it (kube's `is_conflict` and the like
    /// look at the reason).
    pub fn injected(code: u16) -> Self {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            410 => "Expired",
            422 => "Invalid",
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "",
        };
        Self::new(code, reason, format!("fault injected by the test ({code})"))
    }

    pub fn no_such_resource() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
    }

    pub fn status_body(&self, target: Option<&Target>) -> Value {
        let details = target.map(|t| json!({"name": t.name.clone().unwrap_or_default(), "group": t.group, "kind": t.plural}));
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "details": details, "code": self.code})
    }
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;
