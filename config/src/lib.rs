//! Basalt machine config: the `v1alpha1` document kinds, strict parsing that reports every
//! problem with its document, field path and line, cross-document validation, generation of a
//! new cluster's configs and PKI, and patches.
//!
//! This crate only reads, checks and writes config. It must not touch the machine: applying a
//! config is the controllers' job.

#![forbid(unsafe_code)]

pub mod client;
pub mod decode;
pub mod document;
pub mod error;
pub mod generate;
pub mod manifests;
pub mod patch;
pub mod pki;
pub mod resource;
pub mod schema;
pub mod types;
pub mod v1alpha1;
pub mod validate;
pub mod yaml;

use std::fmt;

pub use decode::Problem;
pub use document::{Document, Located};
pub use error::ValueError;
pub use validate::Mode;

/// Why a config was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The text is not YAML.
    #[error("config is not valid YAML: {0}")]
    Syntax(#[from] yaml::SyntaxError),
    /// The YAML is well-formed but the config has problems; every one is listed.
    #[error("{0}")]
    Invalid(Problems),
}

/// Every problem found in one config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "config has {n} problem{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// A machine config that parsed and validated: every value in it is known good.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    docs: Vec<Located>,
}

impl Config {
    /// Parses and validates a multi-document YAML config.
    pub fn parse(text: &str, mode: Mode) -> Result<Self, ConfigError> {
        let nodes = yaml::parse_documents(text)?;
        Self::from_nodes(&nodes, mode)
    }

    /// Decodes and validates documents already read into YAML nodes.
    pub fn from_nodes(nodes: &[yaml::Node], mode: Mode) -> Result<Self, ConfigError> {
        let (docs, mut problems) = document::decode_documents(nodes);
        if nodes.is_empty() {
            problems.push(Problem {
                doc: None,
                path: String::new(),
                message: "the config is empty".into(),
                line: None,
            });
        }
        let kinds: Vec<String> = nodes
            .iter()
            .filter_map(|n| {
                n.get("kind")
                    .and_then(yaml::Node::as_str)
                    .map(str::to_string)
            })
            .collect();
        validate::validate(&docs, &kinds, mode, &mut problems);
        if problems.is_empty() {
            Ok(Config { docs })
        } else {
            problems.sort_by_key(|p| (p.doc.as_ref().map_or(usize::MAX, |d| d.index), p.line));
            Err(ConfigError::Invalid(Problems(problems)))
        }
    }

    /// Builds a config from documents made in code, validating it the same way.
    pub fn from_documents(docs: Vec<Document>, mode: Mode) -> Result<Self, ConfigError> {
        let nodes: Vec<yaml::Node> = docs
            .iter()
            .map(|d| yaml::Node::from_json(&d.to_json()))
            .collect();
        Self::from_nodes(&nodes, mode)
    }

    pub fn documents(&self) -> impl Iterator<Item = &Document> {
        self.docs.iter().map(|d| &d.doc)
    }

    pub fn machine(&self) -> &v1alpha1::MachineConfig {
        self.find(|d| match d {
            Document::Machine(m) => Some(m),
            _ => None,
        })
        .expect("validation guarantees a MachineConfig")
    }

    pub fn cluster(&self) -> &v1alpha1::ClusterConfig {
        self.find(|d| match d {
            Document::Cluster(c) => Some(c),
            _ => None,
        })
        .expect("validation guarantees a ClusterConfig")
    }

    pub fn secrets(&self) -> &v1alpha1::SecretsConfig {
        self.find(|d| match d {
            Document::Secrets(s) => Some(s),
            _ => None,
        })
        .expect("validation guarantees a Secrets document")
    }

    pub fn kubespan(&self) -> Option<&v1alpha1::KubeSpanConfig> {
        self.find(|d| match d {
            Document::KubeSpan(k) => Some(k),
            _ => None,
        })
    }

    fn find<'a, T>(&'a self, f: impl Fn(&'a Document) -> Option<&'a T>) -> Option<&'a T> {
        self.docs.iter().find_map(|d| f(&d.doc))
    }

    /// The config as JSON documents (for patches and the API).
    pub fn to_json_documents(&self) -> Vec<serde_json::Value> {
        self.docs.iter().map(|d| d.doc.to_json()).collect()
    }

    /// The config as multi-document YAML; parsing it back gives an equal config.
    pub fn to_yaml(&self) -> String {
        documents_to_yaml(&self.to_json_documents())
    }

    /// The same config without its Secrets document: safe to share.
    pub fn without_secrets_yaml(&self) -> String {
        let docs: Vec<_> = self
            .docs
            .iter()
            .filter(|d| !matches!(d.doc, Document::Secrets(_)))
            .map(|d| d.doc.to_json())
            .collect();
        documents_to_yaml(&docs)
    }
}

/// Joins JSON documents into one YAML stream.
pub fn documents_to_yaml(docs: &[serde_json::Value]) -> String {
    docs.iter()
        .map(yaml::to_yaml_text)
        .collect::<Vec<_>>()
        .join("")
}
