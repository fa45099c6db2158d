//! Runtime state the request path needs beside the compiled snapshot:
//! built as `Runtime::build(&snapshot, previous)` when a snapshot is put in
//! service, carrying over what did not change (fetched key sets,
//! connections, counters) and dropping what was removed. (Provider
//! connection pools are per worker thread: see `Worker`.)

use crate::{
    model::Snapshot,
    policy::{jwks_fetch::FetchSettings, runtime::SecurityState},
};

/// What runtime state is built with (process-wide settings).
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// How remote JWT key sets are fetched.
    pub jwks_fetch: FetchSettings,
}

#[derive(Debug, Default)]
pub struct Runtime {
    pub security: SecurityState,
}

impl Runtime {
    /// Must be called inside a tokio runtime.
    pub fn build(
        snapshot: &Snapshot,
        settings: &RuntimeSettings,
        previous: Option<&Runtime>,
    ) -> Self {
        Runtime {
            security: SecurityState::build(
                &snapshot.authn,
                &snapshot.ext_authz,
                &settings.jwks_fetch,
                previous.map(|p| &p.security),
            ),
        }
    }
}
