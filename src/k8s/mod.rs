//! Everything that talks to the Kubernetes API.

pub mod identity;
pub mod lease;
pub mod status_writer;
pub mod volumes;

pub use status_writer::{StatusWriter, StatusWriterError};

/// Whether retrying the same request may succeed: conflicts, throttling, server errors and transport
/// failures. Refusals (forbidden, unauthorized, invalid, not found) stay until someone changes something.
pub fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => matches!(status.code, 409 | 429) || status.code >= 500,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        let status: kube::core::Status =
            serde_json::from_value(serde_json::json!({"status": "Failure", "code": code, "message": "m", "reason": "r"})).unwrap();
        kube::Error::Api(status.into())
    }

    #[test]
    fn refusals_are_not_worth_retrying_but_conflicts_and_outages_are() {
        for code in [400, 401, 403, 404, 422] {
            assert!(!is_transient(&api_error(code)), "{code}");
        }
        for code in [409, 429, 500, 503] {
            assert!(is_transient(&api_error(code)), "{code}");
        }
    }
}
