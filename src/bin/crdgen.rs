//! Writes the Backup CRD generated from `src/api` to stdout (CI regenerates `crds/` and fails on a diff).
//!
//! The CRD carries no status subresource, exactly like TiDB Operator's: status is written through the
//! main resource so a cluster with TiDB Operator's own CRD behaves the same.

use kube::CustomResourceExt;
use tidb_ebs_backup::api::Backup;

fn main() {
    let mut crd = Backup::crd();
    for version in &mut crd.spec.versions {
        version.subresources = None;
    }
    print!("{}", serde_norway::to_string(&crd).expect("CRD serialises to YAML"));
}
