//! Validated newtypes: a value of one of these types has been checked, so code past parsing
//! never sees a bad prefix, hostname, key or duration.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use base64::Engine as _;
use serde::{Serialize, Serializer};

use crate::decode::{Cx, Decode, decode_parsed};
use crate::error::{UrlProblem, ValueError};
use crate::yaml::Node;

/// Implements `Decode`, `Serialize`, `Display` and a string JSON Schema for a type with
/// `FromStr<Err = ValueError>` and `Display`.
macro_rules! string_newtype {
    ($t:ty, $format:literal, $desc:literal) => {
        impl Decode for $t {
            fn decode(node: &Node, cx: &mut Cx) -> Option<Self> {
                decode_parsed(node, cx, |s| s.parse())
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl schemars::JsonSchema for $t {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($t).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "format": $format,
                    "description": $desc,
                })
            }
        }
    };
}

/// An IPv4 or IPv6 address with a prefix length: `10.5.0.2/24`, `fd00::1/64`.
/// The host bits are kept: an interface address is a prefix with its host part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, ValueError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(ValueError::PrefixLength { len, max });
        }
        Ok(Prefix { addr, len })
    }
    pub fn addr(&self) -> IpAddr {
        self.addr
    }
    pub fn prefix_len(&self) -> u8 {
        self.len
    }
    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }
    fn bits(addr: IpAddr) -> (u128, u8) {
        match addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        }
    }
    fn mask(&self) -> u128 {
        let (_, width) = Self::bits(self.addr);
        if self.len == 0 {
            0
        } else {
            (u128::MAX << (width - self.len)) & (u128::MAX >> (128 - width))
        }
    }
    /// Whether `ip` lies in this prefix's network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let m = self.mask();
        (Self::bits(ip).0 & m) == (Self::bits(self.addr).0 & m)
    }
    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Prefix) -> bool {
        if self.addr.is_ipv4() != other.addr.is_ipv4() {
            return false;
        }
        let shorter = if self.len <= other.len { self } else { other };
        let longer = if self.len <= other.len { other } else { self };
        shorter.contains(longer.addr)
    }
    /// The network's first and last address as numbers, and whether it is IPv6.
    pub fn range(&self) -> (bool, u128, u128) {
        let (bits, width) = Self::bits(self.addr);
        let m = self.mask();
        let host = !m & (u128::MAX >> (128 - width));
        (self.addr.is_ipv6(), bits & m, (bits & m) | host)
    }
    /// The network with the host bits cleared.
    pub fn network(&self) -> Prefix {
        let bits = Self::bits(self.addr).0 & self.mask();
        let addr = match self.addr {
            // Masking a v4 value keeps it in 32 bits.
            IpAddr::V4(_) => IpAddr::V4(u32::try_from(bits).unwrap_or(u32::MAX).into()),
            IpAddr::V6(_) => IpAddr::V6(bits.into()),
        };
        Prefix {
            addr,
            len: self.len,
        }
    }
}

impl FromStr for Prefix {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let bad = || ValueError::NotPrefix(s.to_string());
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| ValueError::PrefixWithoutLength(s.to_string()))?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        Prefix::new(addr, len).map_err(|e| e.of(s))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}
string_newtype!(
    Prefix,
    "ip-prefix",
    "An IPv4 or IPv6 address with prefix length, e.g. 10.5.0.2/24."
);

impl Decode for IpAddr {
    fn decode(node: &Node, cx: &mut Cx) -> Option<Self> {
        decode_parsed(node, cx, |s| {
            s.parse().map_err(|_| ValueError::NotAddress(s.to_string()))
        })
    }
}

/// A DNS hostname (RFC 1123): labels of 1..=63 letters, digits and inner hyphens, ≤ 253 in all.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname(String);

impl Hostname {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Hostname {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let s_trim = s.strip_suffix('.').unwrap_or(s);
        if s_trim.is_empty() || s_trim.len() > 253 {
            return Err(ValueError::HostnameLength(s.to_string()));
        }
        for label in s_trim.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err(ValueError::HostnameLabel {
                    value: s.to_string(),
                    label: label.to_string(),
                });
            }
        }
        Ok(Hostname(s_trim.to_ascii_lowercase()))
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype!(Hostname, "hostname", "An RFC 1123 hostname.");

/// 32 random bytes in standard base64: the format of WireGuard keys and of the cluster secret.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key32([u8; 32]);

/// A WireGuard public or private key.
pub type WireGuardKey = Key32;

impl Key32 {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Key32(bytes)
    }
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
    pub fn generate() -> Self {
        Key32(rand::random())
    }
}

impl fmt::Debug for Key32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys may be secret: never print them in debug output.
        f.write_str("Key32(..)")
    }
}

impl FromStr for Key32 {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| ValueError::KeyNotBase64)?;
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| ValueError::KeyLength(bytes.len()))?;
        Ok(Key32(arr))
    }
}

impl fmt::Display for Key32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}
string_newtype!(
    Key32,
    "key32-base64",
    "A 32-byte key in standard base64 (44 characters)."
);

/// A duration written as a sum of units: `30s`, `5m`, `1h30m`, `500ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Duration(std::time::Duration);

impl Duration {
    pub fn from_std(d: std::time::Duration) -> Self {
        Duration(d)
    }
    pub fn get(&self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let bad = || ValueError::NotDuration(s.to_string());
        if s.is_empty() {
            return Err(bad());
        }
        let mut total = std::time::Duration::ZERO;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let part = match unit {
                "ms" => std::time::Duration::from_millis(n),
                "s" => std::time::Duration::from_secs(n),
                "m" => std::time::Duration::from_secs(n.saturating_mul(60)),
                "h" => std::time::Duration::from_secs(n.saturating_mul(3600)),
                _ => return Err(bad()),
            };
            total = total.saturating_add(part);
        }
        Ok(Duration(total))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        if ms > 0 {
            write!(f, "{ms}ms")?;
        }
        Ok(())
    }
}
string_newtype!(
    Duration,
    "duration",
    "A duration such as 500ms, 30s, 5m or 1h30m."
);

/// An Ethernet hardware address: `52:54:00:12:34:56`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let bad = || ValueError::NotMac(s.to_string());
        let mut out = [0u8; 6];
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        for (o, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}
string_newtype!(
    MacAddr,
    "mac-address",
    "An Ethernet address such as 52:54:00:12:34:56."
);

/// A Linux interface name: 1..=15 bytes, no `/`, no whitespace, not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkName(String);

impl LinkName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LinkName {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        if s.is_empty() || s.len() > 15 {
            return Err(ValueError::LinkNameLength(s.to_string()));
        }
        if s == "."
            || s == ".."
            || s.bytes()
                .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
        {
            return Err(ValueError::LinkNameCharacters(s.to_string()));
        }
        Ok(LinkName(s.to_string()))
    }
}

impl fmt::Display for LinkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype!(
    LinkName,
    "interface-name",
    "A Linux interface name, 1 to 15 characters."
);

/// An `http(s)://host[:port][/path]` URL; the host may be a name or an IP literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub scheme: String,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl FromStr for Endpoint {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let bad = |why: UrlProblem| ValueError::NotUrl {
            value: s.to_string(),
            why,
        };
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| bad(UrlProblem::NoScheme))?;
        let default_port = match scheme {
            "https" => 443,
            "http" => 80,
            _ => return Err(bad(UrlProblem::Scheme)),
        };
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad(UrlProblem::Spaces));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(bad(UrlProblem::Credentials));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad(UrlProblem::UnclosedBracket))?;
            h.parse::<std::net::Ipv6Addr>()
                .map_err(|_| bad(UrlProblem::BadIpv6))?;
            let port = match after {
                "" => None,
                a => Some(
                    a.strip_prefix(':')
                        .ok_or_else(|| bad(UrlProblem::AfterBracket))?,
                ),
            };
            (h.to_string(), port)
        } else {
            let (h, p) = match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            if h.contains(':') {
                return Err(bad(UrlProblem::Ipv6WithoutBrackets));
            }
            (h.to_string(), p)
        };
        if host.is_empty() {
            return Err(bad(UrlProblem::NoHost));
        }
        if host.parse::<IpAddr>().is_err() {
            host.parse::<Hostname>()
                .map_err(|_| bad(UrlProblem::Host))?;
        }
        let port = match port {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u16>().map_err(|_| bad(UrlProblem::Port))?
            }
            Some(_) => return Err(bad(UrlProblem::Port)),
            None => default_port,
        };
        if port == 0 {
            return Err(bad(UrlProblem::Port));
        }
        Ok(Endpoint {
            scheme: scheme.to_string(),
            host,
            port,
            path: path.to_string(),
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{}://{}:{}{}", self.scheme, host, self.port, self.path)
    }
}
string_newtype!(
    Endpoint,
    "uri",
    "An http(s) URL such as https://10.5.0.2:6443."
);

/// A Kubernetes bootstrap token: `[a-z0-9]{6}.[a-z0-9]{16}`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BootstrapToken(String);

impl BootstrapToken {
    pub fn generate() -> Self {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let pick = |n: usize| -> String {
            (0..n)
                .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
                .collect()
        };
        BootstrapToken(format!("{}.{}", pick(6), pick(16)))
    }
    pub fn id(&self) -> &str {
        &self.0[..6]
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootstrapToken({}.<redacted>)", self.id())
    }
}

impl FromStr for BootstrapToken {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let ok_part = |p: &str, n: usize| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        match s.split_once('.') {
            Some((id, secret)) if ok_part(id, 6) && ok_part(secret, 16) => {
                Ok(BootstrapToken(s.to_string()))
            }
            _ => Err(ValueError::NotBootstrapToken),
        }
    }
}

impl fmt::Display for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype!(
    BootstrapToken,
    "bootstrap-token",
    "A Kubernetes bootstrap token, abcdef.0123456789abcdef."
);

/// One PEM block of the expected label (`CERTIFICATE`, `PRIVATE KEY`), base64 body checked.
#[derive(Clone, PartialEq, Eq)]
pub struct Pem {
    label: String,
    text: String,
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The block may be a private key: show only what it is.
        write!(f, "Pem({})", self.label)
    }
}

impl Pem {
    pub fn parse(s: &str, labels: &[&str]) -> Result<Self, ValueError> {
        let t = s.trim();
        let first = t.lines().next().unwrap_or_default();
        let label = first
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
            .ok_or(ValueError::NotPem)?;
        if !labels.contains(&label) {
            return Err(ValueError::PemLabel {
                label: label.to_string(),
                expected: labels.join(" or "),
            });
        }
        let end = format!("-----END {label}-----");
        let body: String = t
            .lines()
            .skip(1)
            .take_while(|l| *l != end)
            .collect::<Vec<_>>()
            .concat();
        if !t.ends_with(&end) {
            return Err(ValueError::PemWithoutEnd(end));
        }
        base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map_err(|_| ValueError::PemNotBase64)?;
        Ok(Pem {
            label: label.to_string(),
            text: format!("{t}\n"),
        })
    }
    pub fn label(&self) -> &str {
        &self.label
    }
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// A PEM certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate(pub Pem);
/// A PEM private key (PKCS#8, EC or RSA).
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey(pub Pem);

impl Certificate {
    /// The DER of the certificate.
    pub fn der(&self) -> Vec<u8> {
        pem_body(self.0.as_str())
    }

    /// Whether the certificate is a CA whose public key is the one of `key`, and — with
    /// `by_clock` — valid by this machine's clock.
    pub fn check_ca_key(&self, key: Option<&PrivateKey>, by_clock: bool) -> Result<(), ValueError> {
        let der = self.der();
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| ValueError::NotCertificate(e.to_string()))?;
        if !cert.is_ca() {
            return Err(ValueError::NotCa);
        }
        // Every certificate it issued would be refused: say so now, not at the first TLS
        // handshake.
        let v = cert.validity();
        let now = x509_parser::time::ASN1Time::now();
        if by_clock && now < v.not_before {
            return Err(ValueError::CaNotYetValid(v.not_before.to_string()));
        }
        if by_clock && now > v.not_after {
            return Err(ValueError::CaExpired(v.not_after.to_string()));
        }
        if let Some(key) = key {
            let pair = rcgen::KeyPair::from_pem(key.0.as_str())
                .map_err(|e| ValueError::KeyUnreadable(e.to_string()))?;
            if pair.public_key_raw() != &*cert.public_key().subject_public_key.data {
                return Err(ValueError::KeyMismatch);
            }
        }
        Ok(())
    }
}

fn pem_body(text: &str) -> Vec<u8> {
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .unwrap_or_default()
}

impl FromStr for Certificate {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let pem = Pem::parse(s, &["CERTIFICATE"])?;
        let der = pem_body(pem.as_str());
        x509_parser::parse_x509_certificate(&der)
            .map_err(|e| ValueError::NotCertificate(e.to_string()))?;
        Ok(Certificate(pem))
    }
}
impl FromStr for PrivateKey {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let pem = Pem::parse(s, &["PRIVATE KEY", "EC PRIVATE KEY"])?;
        if let Some(bits) = rsa_bits(&pem_body(pem.as_str()))
            && bits < 2048
        {
            return Err(ValueError::RsaTooShort(bits));
        }
        rcgen::KeyPair::from_pem(pem.as_str())
            .map_err(|e| ValueError::NotPrivateKey(e.to_string()))?;
        Ok(PrivateKey(pem))
    }
}

impl PrivateKey {
    /// Whether the key is Ed25519 (Kubernetes signs service-account tokens with RSA or ECDSA
    /// keys only).
    pub fn is_ed25519(&self) -> bool {
        rcgen::KeyPair::from_pem(self.0.as_str())
            .is_ok_and(|k| k.algorithm() == &rcgen::PKCS_ED25519)
    }
}

/// The modulus size of a PKCS#8 RSA private key; `None` for any other DER.
fn rsa_bits(der: &[u8]) -> Option<usize> {
    use x509_parser::der_parser::parse_der;
    let (_, info) = parse_der(der).ok()?;
    let info = info.as_sequence().ok()?;
    let alg = info.get(1)?.as_sequence().ok()?;
    if alg.first()?.as_oid().ok()?.to_id_string() != "1.2.840.113549.1.1.1" {
        return None;
    }
    let (_, rsa) = parse_der(info.get(2)?.as_slice().ok()?).ok()?;
    let modulus = rsa.as_sequence().ok()?.get(1)?.as_slice().ok()?;
    let m: &[u8] = match modulus.iter().position(|&b| b != 0) {
        Some(i) => &modulus[i..],
        None => return Some(0),
    };
    Some((m.len() - 1) * 8 + (8 - m[0].leading_zeros() as usize))
}
impl fmt::Display for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}
impl fmt::Display for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}
impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Certificate(..)")
    }
}
impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}
string_newtype!(
    Certificate,
    "pem-certificate",
    "A PEM-encoded X.509 certificate."
);
string_newtype!(PrivateKey, "pem-private-key", "A PEM-encoded private key.");

#[cfg(test)]
mod tests {
    use super::*;

    /// openssl makes the RSA keys: ring, behind rcgen, cannot generate them.
    fn rsa_key(bits: u32) -> String {
        let o = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
            .arg(format!("rsa_keygen_bits:{bits}"))
            .output()
            .expect("openssl (hack/test installs it)");
        assert!(o.status.success());
        String::from_utf8(o.stdout).unwrap()
    }

    #[test]
    fn rsa_keys_under_2048_bits_are_refused_by_their_size() {
        let e = rsa_key(1024).parse::<PrivateKey>().unwrap_err();
        assert_eq!(e, ValueError::RsaTooShort(1024));
        assert!(e.to_string().starts_with("an RSA key of 1024 bits"), "{e}");
        let k: PrivateKey = rsa_key(2048).parse().unwrap();
        assert!(!k.is_ed25519());
        assert_eq!(rsa_bits(&pem_body(k.0.as_str())), Some(2048));
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert!(
            ed.serialize_pem()
                .parse::<PrivateKey>()
                .unwrap()
                .is_ed25519()
        );
    }

    #[test]
    fn a_ca_out_of_its_validity_is_refused_with_its_dates() {
        let make = |from: time::OffsetDateTime, to: time::OffsetDateTime| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::default();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.not_before = from;
            p.not_after = to;
            let cert = p.self_signed(&key).unwrap();
            (
                cert.pem().parse::<Certificate>().unwrap(),
                key.serialize_pem().parse::<PrivateKey>().unwrap(),
            )
        };
        let now = time::OffsetDateTime::now_utc();
        let day = time::Duration::days(1);
        let (c, k) = make(now - 10 * day, now - day);
        let e = c.check_ca_key(Some(&k), true).unwrap_err();
        assert!(matches!(e, ValueError::CaExpired(_)), "{e}");
        assert!(e.to_string().starts_with("the CA expired on"), "{e}");
        c.check_ca_key(Some(&k), false).unwrap();
        let (c, k) = make(now + day, now + 10 * day);
        let e = c.check_ca_key(Some(&k), true).unwrap_err();
        assert!(matches!(e, ValueError::CaNotYetValid(_)), "{e}");
        c.check_ca_key(Some(&k), false).unwrap();
        let (c, k) = make(now - day, now + day);
        c.check_ca_key(Some(&k), true).unwrap();
    }

    #[test]
    fn prefix() {
        let p: Prefix = "10.5.0.2/24".parse().unwrap();
        assert!(p.contains("10.5.0.1".parse().unwrap()));
        assert!(!p.contains("10.5.1.1".parse().unwrap()));
        assert_eq!(p.network().to_string(), "10.5.0.0/24");
        assert_eq!(
            "10.0.0.300/24".parse::<Prefix>().unwrap_err().to_string(),
            "\"10.0.0.300/24\" is not an IPv4 or IPv6 prefix"
        );
        assert_eq!(
            "10.0.0.1/33".parse::<Prefix>().unwrap_err().to_string(),
            "\"10.0.0.1/33\": prefix length 33 is longer than 32"
        );
        assert_eq!(
            "10.0.0.1".parse::<Prefix>().unwrap_err(),
            ValueError::PrefixWithoutLength("10.0.0.1".into())
        );
        let a: Prefix = "10.0.0.0/8".parse().unwrap();
        let b: Prefix = "10.96.0.0/12".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        let v6: Prefix = "fd00::1/64".parse().unwrap();
        assert!(v6.contains("fd00::ffff".parse().unwrap()));
        assert!(!v6.overlaps(&a));
        let all: Prefix = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn hostname() {
        assert_eq!(
            "Node-1.Example".parse::<Hostname>().unwrap().as_str(),
            "node-1.example"
        );
        assert!("-bad".parse::<Hostname>().is_err());
        assert!("a_b".parse::<Hostname>().is_err());
        assert!("".parse::<Hostname>().is_err());
        assert!("a".repeat(64).parse::<Hostname>().is_err());
    }

    #[test]
    fn key32() {
        let k = Key32::generate();
        assert_eq!(k.to_string().parse::<Key32>().unwrap(), k);
        assert_eq!(
            "AAAA".parse::<Key32>().unwrap_err(),
            ValueError::KeyLength(3)
        );
        assert_eq!("!!".parse::<Key32>().unwrap_err(), ValueError::KeyNotBase64);
        assert_eq!(format!("{k:?}"), "Key32(..)");
    }

    #[test]
    fn duration() {
        let d: Duration = "1h30m".parse().unwrap();
        assert_eq!(d.get().as_secs(), 5400);
        assert_eq!(d.to_string(), "1h30m");
        assert_eq!("500ms".parse::<Duration>().unwrap().get().as_millis(), 500);
        assert!("5".parse::<Duration>().is_err());
        assert!("5d".parse::<Duration>().is_err());
        assert!("m".parse::<Duration>().is_err());
    }

    #[test]
    fn others() {
        assert_eq!(
            "52:54:00:AB:cd:ef".parse::<MacAddr>().unwrap().to_string(),
            "52:54:00:ab:cd:ef"
        );
        assert!("52:54:00".parse::<MacAddr>().is_err());
        assert!("eth0.100".parse::<LinkName>().is_ok());
        assert!("averyveryverylongname".parse::<LinkName>().is_err());
        let e: Endpoint = "https://10.5.0.2:6443".parse().unwrap();
        assert_eq!((e.host.as_str(), e.port), ("10.5.0.2", 6443));
        assert_eq!(
            "https://[fd00::1]:6443".parse::<Endpoint>().unwrap().host,
            "fd00::1"
        );
        assert_eq!("https://cp.example".parse::<Endpoint>().unwrap().port, 443);
        assert!("10.5.0.2:6443".parse::<Endpoint>().is_err());
        assert!("ftp://x".parse::<Endpoint>().is_err());
        assert!("https://:6443".parse::<Endpoint>().is_err());
        // What must not pass for an endpoint, each with its reason.
        for (bad, why) in [
            ("https://user:pass@10.5.0.2:6443", "credentials"),
            ("https://fd00::1:6443", "brackets"),
            ("https://[fd00::1]junk", "only :port"),
            ("https://[fd00::1]:", "not a number"),
            ("https://10.5.0.2:+443", "not a number"),
            ("https://10.5.0.2:6443/\r\nHost: evil", "control characters"),
            ("https://10.5.0.2 :6443", "spaces"),
        ] {
            let e = bad.parse::<Endpoint>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(
            "https://[fd00::1]".parse::<Endpoint>().unwrap().port,
            443,
            "brackets alone take the default port"
        );
        let t = BootstrapToken::generate();
        assert!(t.as_str().parse::<BootstrapToken>().is_ok());
        assert!("ABCDEF.0123456789abcdef".parse::<BootstrapToken>().is_err());
    }
}
