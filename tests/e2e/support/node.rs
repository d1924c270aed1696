//! The stack's node (`tests/harness/up --node`): a cluster of its own on the stack's etcd with a real
//! kubelet, containerd and scheduler, whose pods reach PD and the AWS emulator through addresses the run
//! owns (`NODE_*` in the env file).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{Stack, describe_output};

pub struct NodeCluster {
    /// The stack with the node cluster's kubeconfig: fixtures, kubectl and helm act on that cluster; PD
    /// and the AWS emulator are the stack's own.
    pub stack: &'static Stack,
    /// The kubelet's Node.
    pub node_name: String,
    /// What a pod uses for the AWS emulator, PD and TiKV (forwarded to the stack's loopback ports).
    pub aws_endpoint_url: String,
    pub pd_url: String,
    pub tikv_dial_address: String,
}

impl NodeCluster {
    /// The node of the stack named by `HARNESS_ENV`; a stack started without `--node` fails the test
    /// with a message saying so (CI always starts it).
    pub fn get() -> &'static NodeCluster {
        static NODE: OnceLock<NodeCluster> = OnceLock::new();
        NODE.get_or_init(|| {
            let base = Stack::get();
            let var = |key: &str| {
                base.vars.get(key).cloned().unwrap_or_else(|| {
                    panic!("{key} is not in the env file: these tests need the stack's node; start it with tests/harness/up --node WORKDIR")
                })
            };
            let mut stack = base.clone();
            stack.kubeconfig = PathBuf::from(var("NODE_KUBECONFIG"));
            stack.kube_apiserver = var("NODE_APISERVER").trim_end_matches('/').to_string();
            stack.vars.insert("KUBECONFIG".into(), var("NODE_KUBECONFIG"));
            NodeCluster {
                stack: Box::leak(Box::new(stack)),
                node_name: var("NODE_NAME"),
                aws_endpoint_url: var("NODE_AWS_ENDPOINT_URL").trim_end_matches('/').to_string(),
                pd_url: var("NODE_PD_URL").trim_end_matches('/').to_string(),
                tikv_dial_address: var("NODE_TIKV_DIAL_ADDRESS"),
            }
        })
    }

    /// Puts an OCI archive into the node's containerd, as a registry pull would.
    pub async fn import_image(&self, archive: &Path) {
        let out = tokio::process::Command::new("tests/harness/node/import-image")
            .arg(&self.stack.workdir)
            .arg(archive)
            .output()
            .await
            .expect("running tests/harness/node/import-image");
        assert!(out.status.success(), "import-image: {}", describe_output(&out));
    }
}
