//! The compiled configuration: plain data the request path reads, built
//! from raw resources by `compile` (no tasks, no clients, no I/O once
//! built). Immutable; a reload builds a new one and swaps it in whole.
//! Runtime state (connections, fetched keys, counters) lives apart, in the
//! proxy's runtime, built from a snapshot and the previous runtime.

pub mod authn;
pub mod authz;
pub mod compile;
pub mod dump;
pub mod extauthz;
pub mod gateway;
pub mod jwks;
pub mod route;
pub mod routing;
pub mod xdp;

use std::{path::PathBuf, sync::Arc};

use crate::config::{ErrorList, Settings, load::Env, load_paths, mesh};

use authn::Authenticator;
use authz::Policies;
use extauthz::ExtAuthz;

pub use compile::compile;
pub use gateway::{HostPattern, Listener, Protocol, Server, ServerTls};
pub use route::{Backend, Provider, RouteRule, Upstream, VirtualHost};

/// The validated configuration.
#[derive(Debug)]
pub struct Snapshot {
    pub listeners: Vec<Listener>,
    pub providers: Vec<Arc<Provider>>,
    pub policies: Policies,
    /// RequestAuthentication: JWT verification (call `authn.start` once serving).
    pub authn: Arc<Authenticator>,
    /// CUSTOM policies' external authorizers.
    pub ext_authz: Arc<ExtAuthz>,
    /// Things that are not errors but that a user should hear about.
    pub warnings: Vec<String>,
    /// Files read besides the configuration (certificates, keys, CAs):
    /// a change to any of them is a reason to reload.
    pub watched: Vec<PathBuf>,
}

impl Snapshot {
    /// Every backend's rewrite, once per (rule, server) it is bound to.
    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.listeners
            .iter()
            .flat_map(|l| &l.servers)
            .flat_map(|s| &s.vhosts)
            .flat_map(|v| &v.rules)
            .flat_map(|r| &r.backends)
            .map(|b| &b.upstream)
    }
}

/// Loads `paths` (and the MeshConfig file, if any) and compiles them for
/// the gateway `settings` describes.
pub fn load(paths: &[PathBuf], settings: &Settings, env: &dyn Env) -> Result<Snapshot, ErrorList> {
    let raw = load_paths(paths, env)?;
    let Some(mesh_path) = &settings.mesh_path else {
        return compile(&raw, settings);
    };
    let with_mesh = Settings {
        mesh: mesh::load_mesh_config(mesh_path)?,
        ..settings.clone()
    };
    let mut snapshot = compile(&raw, &with_mesh)?;
    snapshot.watched.push(mesh_path.clone());
    Ok(snapshot)
}
