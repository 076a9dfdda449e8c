//! A node's KubeSpan identity: a WireGuard (X25519) key pair, created once and persisted, and a
//! mesh address: the cluster's ULA /64 (from the cluster id) plus a suffix from the public key,
//! so it is stable as long as the key is.

use std::net::Ipv6Addr;
use std::path::Path;

use basalt_config::types::{Key32, Prefix};
use basalt_resources::Spec;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Serialize;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} does not hold a WireGuard private key (32 bytes, base64)")]
    Bad { path: String },
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A WireGuard key pair.
#[derive(Clone)]
pub struct KeyPair {
    secret: StaticSecret,
    public: PublicKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("KeyPair")
            .field("public", &self.public_base64())
            .finish()
    }
}

impl KeyPair {
    pub fn generate() -> Self {
        Self::from_private(rand::random())
    }

    pub fn from_private(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        KeyPair { secret, public }
    }

    pub fn public(&self) -> [u8; 32] {
        *self.public.as_bytes()
    }

    pub fn private(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }

    /// The public key as `wg` prints it.
    pub fn public_base64(&self) -> String {
        B64.encode(self.public())
    }

    /// The key at `path` (base64, as `wg genkey` writes it), or a new one written there
    /// atomically with mode 0600.
    pub fn load_or_create(path: &Path) -> Result<Self, IdentityError> {
        let shown = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes: [u8; 32] = B64
                    .decode(text.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or(IdentityError::Bad { path: shown })?;
                Ok(Self::from_private(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = Self::generate();
                basalt_sys::fs::atomic_write(
                    path,
                    format!("{}\n", B64.encode(k.private())).as_bytes(),
                    0o600,
                )
                .map_err(|source| IdentityError::Write {
                    path: shown,
                    source,
                })?;
                Ok(k)
            }
            Err(source) => Err(IdentityError::Read {
                path: shown,
                source,
            }),
        }
    }
}

/// The cluster's mesh prefix: `fd` + 40 bits of SHA-256 over the cluster id, subnet 0: a ULA
/// /64 (RFC 4193) every node of the cluster computes alike.
pub fn mesh_prefix(cluster_id: &Key32) -> Prefix {
    let h = Sha256::new()
        .chain_update(b"basalt kubespan prefix v1")
        .chain_update(cluster_id.bytes())
        .finalize();
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[1..6].copy_from_slice(&h[..5]);
    Prefix::new(Ipv6Addr::from(a).into(), 64).expect("64 fits IPv6")
}

/// The node's mesh address: the prefix plus 64 bits of SHA-256 over its public key.
pub fn mesh_address(prefix: &Prefix, public_key: &[u8; 32]) -> Ipv6Addr {
    let h = Sha256::new()
        .chain_update(b"basalt kubespan address v1")
        .chain_update(public_key)
        .finalize();
    let mut a = match prefix.network().addr() {
        std::net::IpAddr::V6(v6) => v6.octets(),
        std::net::IpAddr::V4(_) => [0; 16],
    };
    a[8..].copy_from_slice(&h[..8]);
    Ipv6Addr::from(a)
}

/// The id a node publishes itself under: a hash of its public key (no secret in it).
pub fn affiliate_id(public_key: &[u8; 32]) -> String {
    let h = Sha256::new()
        .chain_update(b"basalt affiliate id v1")
        .chain_update(public_key)
        .finalize();
    h[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The id a cluster is known by at the discovery server: a hash of the cluster id, so the
/// server does not learn even that.
pub fn discovery_cluster_id(cluster_id: &Key32) -> String {
    let h = Sha256::new()
        .chain_update(b"basalt discovery cluster v1")
        .chain_update(cluster_id.bytes())
        .finalize();
    h[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The WireGuard pre-shared key every pair of the cluster's nodes mixes into its handshakes:
/// derived from the cluster secret, so a node without the secret cannot join the mesh even with
/// a peer's public key in hand.
pub fn preshared_key(cluster_secret: &Key32) -> [u8; 32] {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"basalt kubespan"), cluster_secret.bytes());
    let mut key = [0u8; 32];
    hk.expand(b"wireguard preshared key v1", &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    key
}

/// This node's identity (namespace `kubespan`, id `local`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeSpanIdentity {
    /// The WireGuard public key (base64, as `wg` shows it).
    pub public_key: String,
    /// The mesh address, in the cluster's /64.
    pub address: String,
    pub prefix: String,
    pub affiliate_id: String,
}

impl Spec for KubeSpanIdentity {
    const TYPE: &'static str = "KubeSpanIdentity";
    const NAMESPACE: &'static str = "kubespan";
}

impl KubeSpanIdentity {
    pub fn new(keys: &KeyPair, cluster_id: &Key32) -> Self {
        let prefix = mesh_prefix(cluster_id);
        KubeSpanIdentity {
            public_key: keys.public_base64(),
            address: mesh_address(&prefix, &keys.public()).to_string(),
            prefix: prefix.to_string(),
            affiliate_id: affiliate_id(&keys.public()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_persist_and_the_address_follows_the_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("kubespan.key");
        let a = KeyPair::load_or_create(&p).unwrap();
        let b = KeyPair::load_or_create(&p).unwrap();
        assert_eq!(a.public(), b.public(), "loaded, not made again");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!format!("{a:?}").contains(&B64.encode(a.private())));

        let cluster = Key32::from_bytes([7; 32]);
        let ia = KubeSpanIdentity::new(&a, &cluster);
        assert_eq!(
            ia,
            KubeSpanIdentity::new(&b, &cluster),
            "stable across restarts"
        );
        let prefix: Prefix = ia.prefix.parse().unwrap();
        assert!(prefix.contains(ia.address.parse().unwrap()));
        assert!(
            ia.prefix.starts_with("fd") && ia.prefix.ends_with("::/64"),
            "{}",
            ia.prefix
        );
        // Another node: same prefix, another address. Another cluster: another prefix.
        let c = KeyPair::generate();
        let ic = KubeSpanIdentity::new(&c, &cluster);
        assert_eq!(ic.prefix, ia.prefix);
        assert_ne!(ic.address, ia.address);
        let other = KubeSpanIdentity::new(&a, &Key32::from_bytes([8; 32]));
        assert_ne!(other.prefix, ia.prefix);

        std::fs::write(&p, "not a key").unwrap();
        let e = KeyPair::load_or_create(&p).unwrap_err().to_string();
        assert!(e.contains("does not hold a WireGuard private key"), "{e}");
    }

    #[test]
    fn the_public_key_is_x25519_as_wireguard_computes_it() {
        // RFC 7748 §6.1: Alice's private and public keys.
        let private: [u8; 32] = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let k = KeyPair::from_private(private);
        assert_eq!(
            k.public()[..4],
            [0x85, 0x20, 0xf0, 0x09],
            "RFC 7748's public key starts 8520f009"
        );
    }
}
