//! The client config `osctl` reads (`osconfig`): named contexts, each with the OS CA, a client
//! certificate and key, the endpoints to dial and the nodes to target.

use std::collections::BTreeMap;

use crate::config_struct;
use crate::decode::{Cx, Decode};
use crate::types::{Certificate, PrivateKey};
use crate::yaml;

config_struct! {
    /// One cluster's credentials and targets.
    pub struct Context {
        /// Addresses of the nodes osctl dials (the API gateway, port 50000 unless given).
        pub endpoints: Vec<String> = "endpoints";
        /// Nodes the requests are for, when they differ from the endpoints.
        pub nodes: Vec<String> = "nodes";
        /// The OS CA certificate the nodes' serving certificates are checked against.
        pub ca: Certificate = "ca";
        /// The client certificate (its Organization is the role: os:admin, os:operator, os:reader).
        pub crt: Certificate = "crt";
        /// The client key.
        pub key: PrivateKey = "key";
        /// Dial from inside this network namespace (a name under /run/netns): the nodes of a
        /// local QEMU cluster live on a segment in a namespace of their own. Needs root.
        pub netns: Option<String> = "netns";
    }
}

config_struct! {
    /// The osctl client config.
    pub struct ClientConfig {
        /// The context used when none is named.
        pub context: Option<String> = "context";
        /// Contexts by name.
        pub contexts: BTreeMap<String, Context> = "contexts";
    }
}

/// Why a client config was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    #[error("client config is not valid YAML: {0}")]
    Syntax(#[from] yaml::SyntaxError),
    #[error("client config is empty")]
    Empty,
    #[error("{0}")]
    Invalid(crate::Problems),
}

impl ClientConfig {
    pub fn parse(text: &str) -> Result<Self, ClientConfigError> {
        let docs = yaml::parse_documents(text)?;
        let node = docs.first().ok_or(ClientConfigError::Empty)?;
        let mut cx = Cx::default();
        let cfg = ClientConfig::decode(node, &mut cx);
        match cfg {
            Some(mut c) if cx.problems.is_empty() => {
                if let Some(cur) = &c.context {
                    if !c.contexts.contains_key(cur) {
                        return Err(ClientConfigError::Invalid(crate::Problems(vec![
                            crate::Problem {
                                doc: None,
                                path: ".context".into(),
                                message: format!("names context {cur:?}, which is not defined"),
                                line: node.get("context").map(|n| n.line),
                            },
                        ])));
                    }
                } else if c.contexts.len() == 1 {
                    c.context = c.contexts.keys().next().cloned();
                }
                Ok(c)
            }
            _ => Err(ClientConfigError::Invalid(crate::Problems(cx.problems))),
        }
    }

    pub fn to_yaml(&self) -> String {
        yaml::to_yaml_text(&serde_json::to_value(self).unwrap_or_default())
    }

    /// Adds the contexts of `other`; a name already taken gets a `-1`, `-2`... suffix.
    /// Returns the names the merged contexts got.
    pub fn merge(&mut self, other: ClientConfig) -> Vec<String> {
        let mut renamed = Vec::new();
        for (name, ctx) in other.contexts {
            let mut new_name = name.clone();
            let mut n = 1;
            while self.contexts.contains_key(&new_name) {
                new_name = format!("{name}-{n}");
                n += 1;
            }
            if other.context.as_deref() == Some(name.as_str()) {
                self.context = Some(new_name.clone());
            }
            self.contexts.insert(new_name.clone(), ctx);
            renamed.push(new_name);
        }
        renamed
    }

    /// Removes the contexts that hold the same client certificate as a context of `other`
    /// (what [`ClientConfig::merge`] of `other` added, under whatever name); the current
    /// context is unset if it goes. Returns the names removed.
    pub fn forget(&mut self, other: &ClientConfig) -> Vec<String> {
        let theirs: Vec<&str> = other.contexts.values().map(|c| c.crt.0.as_str()).collect();
        let gone: Vec<String> = self
            .contexts
            .iter()
            .filter(|(_, c)| theirs.contains(&c.crt.0.as_str()))
            .map(|(n, _)| n.clone())
            .collect();
        for n in &gone {
            self.contexts.remove(n);
        }
        if self.context.as_ref().is_some_and(|c| gone.contains(c)) {
            self.context = None;
        }
        gone
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::generate::{GenOptions, generate};

    fn cluster(name: &str) -> super::ClientConfig {
        generate(&GenOptions {
            cluster_name: name.parse().unwrap(),
            endpoint: "https://10.5.0.2:6443".parse().unwrap(),
            with_kubespan: false,
            secrets: None,
            install_disk: None,
        })
        .unwrap()
        .client
    }

    #[test]
    fn forgetting_a_cluster_removes_its_contexts_under_any_name_and_no_other() {
        let (a, b) = (cluster("a"), cluster("b"));
        let mut mine = a.clone();
        mine.merge(b.clone());
        // Merged twice: the second copy got a new name.
        assert_eq!(mine.merge(b.clone()), vec!["b-1".to_string()]);
        assert_eq!(mine.context.as_deref(), Some("b-1"));
        let mut gone = mine.forget(&b);
        gone.sort();
        assert_eq!(gone, vec!["b".to_string(), "b-1".to_string()]);
        assert_eq!(mine.contexts.keys().collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(
            mine.context, None,
            "the current context was b-1: none is current now"
        );
        // Another cluster's contexts are not touched; forgetting twice removes nothing.
        assert!(mine.forget(&b).is_empty());
        assert_eq!(mine.forget(&a), vec!["a".to_string()]);
    }
}
