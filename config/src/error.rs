//! Why one value is not what its field asks for. The reader attaches the document, field and
//! line ([`crate::Problem`]); these say what is wrong with the value itself.

/// Why a value was refused: each parser of a value type says which rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// A value, and what is wrong in it (`"10.0.0.1/40": prefix length 40 is longer than 32`).
    #[error("{value:?}: {source}")]
    In {
        value: String,
        source: Box<ValueError>,
    },

    #[error("prefix length {len} is longer than {max}")]
    PrefixLength { len: u8, max: u8 },
    #[error("{0:?} is not an IPv4 or IPv6 prefix")]
    NotPrefix(String),
    #[error("{0:?} is not an IPv4 or IPv6 prefix (the /length is missing)")]
    PrefixWithoutLength(String),
    #[error("{0:?} is not an IPv4 or IPv6 address")]
    NotAddress(String),

    #[error("{0:?} is not a valid hostname (1 to 253 characters)")]
    HostnameLength(String),
    #[error(
        "{value:?} is not a valid hostname: label {label:?} must be 1 to 63 letters, digits or inner hyphens"
    )]
    HostnameLabel { value: String, label: String },

    #[error("value is not valid base64 (expected a 32-byte key in standard base64)")]
    KeyNotBase64,
    #[error("value decodes to {0} bytes; a key is 32 bytes (44 base64 characters)")]
    KeyLength(usize),

    #[error("{0:?} is not a duration (use a number with a unit: 500ms, 30s, 5m, 1h30m)")]
    NotDuration(String),
    #[error("{0:?} is not a MAC address (six hex bytes separated by colons)")]
    NotMac(String),

    #[error("{0:?} is not a valid interface name (1 to 15 characters)")]
    LinkNameLength(String),
    #[error("{0:?} is not a valid interface name (no '/', ':' or whitespace)")]
    LinkNameCharacters(String),

    /// An endpoint URL, and which part of it is wrong.
    #[error("{value:?} is not a URL: {why}")]
    NotUrl { value: String, why: UrlProblem },

    #[error(
        "value is not a bootstrap token (6 and 16 lower-case letters or digits, joined by '.')"
    )]
    NotBootstrapToken,

    #[error("value is not PEM (expected -----BEGIN ...-----)")]
    NotPem,
    #[error("value is a PEM {label:?} block; expected {expected}")]
    PemLabel { label: String, expected: String },
    #[error("PEM block has no {0:?} line")]
    PemWithoutEnd(String),
    #[error("PEM body is not valid base64")]
    PemNotBase64,
    /// The certificate parser's reason.
    #[error("value is not an X.509 certificate: {0}")]
    NotCertificate(String),
    #[error("certificate is not a CA (basicConstraints CA is not set)")]
    NotCa,
    #[error("the CA is not valid before {0} (is this machine's clock right?)")]
    CaNotYetValid(String),
    #[error("the CA expired on {0}")]
    CaExpired(String),
    /// The key parser's reason.
    #[error("key cannot be read: {0}")]
    KeyUnreadable(String),
    #[error("key does not belong to this certificate")]
    KeyMismatch,
    #[error("an RSA key of {0} bits: RSA keys need at least 2048 (or use an ECDSA or Ed25519 key)")]
    RsaTooShort(usize),
    /// The key parser's reason.
    #[error("value is not a usable private key: {0}")]
    NotPrivateKey(String),

    /// A word that is not one of a closed set (`mode`, an enum field).
    #[error("{value:?} is not {expected}")]
    NotOneOf { value: String, expected: String },

    #[error("{0:?}: the prefix before / is not a DNS subdomain")]
    LabelPrefix(String),
    #[error("a name is 1 to 63 characters")]
    LabelNameLength,
    #[error("only letters, digits, '-', '_' and '.', starting and ending with a letter or digit")]
    LabelNameCharacters,
    /// A label value, and what is wrong in it.
    #[error("value {value:?}: {source}")]
    LabelValue {
        value: String,
        source: Box<ValueError>,
    },

    #[error("{0:?} is not a flag name: give it without dashes, e.g. max-pods")]
    NotFlagName(String),
    #[error(
        "--{0} is set by Basalt (the kubelet would not run as the node); use the config's own fields"
    )]
    FlagOwned(String),
    #[error("{0:?} is not a device under /dev (e.g. /dev/vda)")]
    NotDevice(String),
    #[error("{0:?} is not a size bound like \">= 100GB\" or \"<= 2TiB\"")]
    NotSizeBound(String),

    #[error("{0:?} does not start with http:// or https://")]
    NotHttp(String),
    #[error("{0:?}: a registry endpoint has no credentials, query or fragment")]
    EndpointExtras(String),
    #[error("{url:?}: {host:?} is not a host or host:port")]
    EndpointHost { url: String, host: String },
}

impl ValueError {
    /// This error, said of `value`.
    pub fn of(self, value: &str) -> ValueError {
        ValueError::In {
            value: value.to_string(),
            source: Box::new(self),
        }
    }
}

/// Which part of an endpoint URL is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UrlProblem {
    #[error("expected https://host:port")]
    NoScheme,
    #[error("the scheme must be http or https")]
    Scheme,
    #[error("it has spaces or control characters")]
    Spaces,
    #[error("credentials (user@) do not belong in an endpoint")]
    Credentials,
    #[error("unclosed '['")]
    UnclosedBracket,
    #[error("bad IPv6 literal")]
    BadIpv6,
    #[error("only :port may follow ']'")]
    AfterBracket,
    #[error("an IPv6 address goes in brackets, e.g. https://[fd00::1]:6443")]
    Ipv6WithoutBrackets,
    #[error("the host is missing")]
    NoHost,
    #[error("the host is not a hostname or an IP address")]
    Host,
    #[error("the port is not a number 1..65535")]
    Port,
}
