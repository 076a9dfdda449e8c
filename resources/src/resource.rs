//! Resources: metadata plus a typed spec.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

/// A spec type. `TYPE` names it (`LinkSpec`), `NAMESPACE` is where it lives (`network`).
pub trait Spec: Clone + PartialEq + fmt::Debug + Serialize + Send + Sync + 'static {
    const TYPE: &'static str;
    const NAMESPACE: &'static str;
}

/// Whether a resource is live or on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Running,
    /// Torn down by its owner; destroyed once every finalizer is removed.
    TearingDown,
}

/// Everything about a resource but its spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metadata {
    pub namespace: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub id: String,
    /// Starts at 1 and goes up by one on every change.
    pub version: u64,
    /// The store revision of the last change.
    pub revision: u64,
    /// The controller (or component) that writes this resource; nobody else may.
    pub owner: String,
    pub phase: Phase,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Consumers that must let go before the resource is destroyed.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub finalizers: BTreeSet<String>,
}

/// Object-safe view of a spec, so one store holds every type.
pub trait DynSpec: Send + Sync + fmt::Debug {
    fn as_any(&self) -> &dyn Any;
    fn to_json(&self) -> serde_json::Value;
    fn dyn_eq(&self, other: &dyn DynSpec) -> bool;
}

impl<T: Spec> DynSpec for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
    fn dyn_eq(&self, other: &dyn DynSpec) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }
}

/// A resource as stored: immutable, shared by reference; a change makes a new one.
#[derive(Debug, Clone)]
pub struct Resource {
    pub metadata: Metadata,
    pub spec: Arc<dyn DynSpec>,
}

impl Resource {
    /// The spec as `T`, when the resource is of that type.
    pub fn spec<T: Spec>(&self) -> Option<&T> {
        self.spec.as_any().downcast_ref::<T>()
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "metadata": self.metadata,
            "spec": self.spec.to_json(),
        })
    }
}

/// Names a resource type in a namespace (and optionally one resource of it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind {
    pub namespace: String,
    pub type_: String,
}

impl Kind {
    pub fn of<T: Spec>() -> Self {
        Kind {
            namespace: T::NAMESPACE.to_string(),
            type_: T::TYPE.to_string(),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.type_)
    }
}
