//! What makes a reconcile pass stop short (and be retried): Kubernetes, or an unreadable record.

use crate::reason::Reason;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Status(#[from] crate::k8s::StatusWriterError),
    #[error("the Backup's record annotation is unreadable: {0}")]
    Record(super::record::RecordError),
}

impl Error {
    pub fn reason(&self) -> Reason {
        match self {
            Self::Kube(_) => Reason::KubernetesAPIFailed,
            Self::Status(_) => Reason::StatusWriteFailed,
            Self::Record(_) => Reason::RecordUnreadable,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
