//! Affiliates: what a node tells its cluster about itself, sealed so the discovery server
//! stores only ciphertext. The key comes from the cluster secret (HKDF-SHA256), which the
//! server never sees; a record sealed under another cluster's secret, or changed in transit,
//! does not open.

use std::net::{IpAddr, SocketAddr};

use basalt_config::types::Key32;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};

/// One node, as it publishes itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Affiliate {
    pub hostname: String,
    /// The WireGuard public key (base64).
    pub public_key: String,
    pub mesh_address: IpAddr,
    /// The node's own addresses (routed through the mesh to it).
    pub node_addresses: Vec<IpAddr>,
    /// Where its WireGuard listens, as it knows them.
    pub endpoints: Vec<SocketAddr>,
    /// Pod networks behind it (routed through the mesh when configured).
    pub pod_cidrs: Vec<String>,
    /// It forwards between peers that cannot reach each other directly.
    #[serde(default)]
    pub relay: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the record is too short to be sealed")]
    Short,
    #[error("the record does not open with this cluster's key (another cluster, or altered)")]
    Open,
    #[error("the record opened but is not an affiliate: {0}")]
    Decode(String),
}

const NONCE: usize = 12;

/// Seals and opens affiliate records with the cluster's key.
#[derive(Clone)]
pub struct Sealer {
    aead: ChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer")
    }
}

impl Sealer {
    pub fn new(cluster_secret: &Key32) -> Self {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"basalt discovery"), cluster_secret.bytes());
        let mut key = [0u8; 32];
        hk.expand(b"affiliate seal v1", &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        Sealer {
            aead: ChaCha20Poly1305::new(Key::from_slice(&key)),
        }
    }

    /// A random nonce, then the ciphertext and its tag.
    pub fn seal(&self, a: &Affiliate) -> Vec<u8> {
        let plain = serde_json::to_vec(a).expect("an affiliate serializes");
        let nonce: [u8; NONCE] = rand::random();
        let mut out = nonce.to_vec();
        out.extend(
            self.aead
                .encrypt(Nonce::from_slice(&nonce), plain.as_slice())
                .expect("ChaCha20-Poly1305 encrypts any length we produce"),
        );
        out
    }

    pub fn open(&self, data: &[u8]) -> Result<Affiliate, SealError> {
        if data.len() < NONCE + 16 {
            return Err(SealError::Short);
        }
        let (nonce, ct) = data.split_at(NONCE);
        let plain = self
            .aead
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| SealError::Open)?;
        serde_json::from_slice(&plain).map_err(|e| SealError::Decode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Affiliate {
        Affiliate {
            hostname: "node1".into(),
            public_key: "pub".into(),
            mesh_address: "fd12:3456:789a::1".parse().unwrap(),
            node_addresses: vec!["10.5.0.2".parse().unwrap()],
            endpoints: vec!["203.0.113.7:51820".parse().unwrap()],
            pod_cidrs: vec!["10.244.1.0/24".into()],
            relay: false,
        }
    }

    #[test]
    fn sealed_records_open_only_with_the_cluster_secret_and_unaltered() {
        let s = Sealer::new(&Key32::from_bytes([1; 32]));
        let sealed = s.seal(&node());
        assert_eq!(s.open(&sealed).unwrap(), node());
        // What the server stores says nothing readable.
        let text = String::from_utf8_lossy(&sealed);
        assert!(!text.contains("node1") && !text.contains("10.5.0.2"));
        // Two seals of one record differ (fresh nonces).
        assert_ne!(s.seal(&node()), sealed);
        let other = Sealer::new(&Key32::from_bytes([2; 32]));
        assert_eq!(other.open(&sealed), Err(SealError::Open));
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(s.open(&bad), Err(SealError::Open));
        assert_eq!(s.open(b"short"), Err(SealError::Short));
    }
}
