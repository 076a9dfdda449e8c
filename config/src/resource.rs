//! The active config as a resource (`config/ActiveConfig`, id [`ACTIVE_ID`]): what the node's
//! controllers reconcile to. Absent in maintenance mode.
//!
//! Its spec is the typed [`Config`]; what it shows through the API (`osctl get activeconfig`)
//! is a summary — the generation and the documents' ids — never the documents themselves
//! (those are the `MachineConfig` resources, redacted by role).

use std::sync::Arc;

use basalt_resources::{Spec, Store};
use serde::Serialize;

use crate::Config;

/// The id of the one `ActiveConfig` resource.
pub const ACTIVE_ID: &str = "active";

/// The node's active config, and how many configs it has activated since boot.
#[derive(Debug, Clone)]
pub struct ActiveConfig {
    pub generation: u64,
    pub config: Arc<Config>,
}

impl PartialEq for ActiveConfig {
    fn eq(&self, other: &Self) -> bool {
        self.generation == other.generation
            && (Arc::ptr_eq(&self.config, &other.config) || self.config == other.config)
    }
}

impl Serialize for ActiveConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let kinds: Vec<&str> = self.config.documents().map(|d| d.kind()).collect();
        let mut st = s.serialize_struct("ActiveConfig", 2)?;
        st.serialize_field("generation", &self.generation)?;
        st.serialize_field("documents", &kinds)?;
        st.end()
    }
}

impl Spec for ActiveConfig {
    const TYPE: &'static str = "ActiveConfig";
    const NAMESPACE: &'static str = "config";
}

/// The active config in `store`, if the node has one.
pub fn active(store: &Store) -> Option<Arc<Config>> {
    store.get::<ActiveConfig>(ACTIVE_ID).map(|(_, a)| a.config)
}
