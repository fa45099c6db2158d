//! What the gateway is, as opposed to what its configuration says: the
//! workload's labels and namespace, where credentials live, addresses, the
//! MeshConfig. The compiler reads it beside the resources.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use super::{Labels, mesh::MeshConfig};

/// What the gateway is, as opposed to what the configuration says.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The gateway workload's labels; selectors are matched against them.
    pub workload_labels: Labels,
    /// The namespace the gateway runs in (namespace-scoped policies apply here).
    pub namespace: String,
    /// Istio's root namespace: selector-less policies there apply to every workload.
    pub root_namespace: String,
    /// Where `credentialName: NAME` finds `NAME/tls.crt` and `NAME/tls.key`.
    pub credentials_dir: Option<PathBuf>,
    /// Address listeners bind to unless a server sets `bind`.
    pub bind_address: IpAddr,
    /// Gateway port → local port, for running unprivileged (`80=8080`).
    pub port_map: BTreeMap<u16, u16>,
    /// Istio MeshConfig: the extension providers CUSTOM policies name.
    pub mesh: MeshConfig,
    /// Where `mesh` is read from (`--mesh-config`), again at every reload.
    pub mesh_path: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            workload_labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
            namespace: "istio-system".into(),
            root_namespace: "istio-system".into(),
            credentials_dir: None,
            bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port_map: BTreeMap::new(),
            mesh: MeshConfig::default(),
            mesh_path: None,
        }
    }
}
