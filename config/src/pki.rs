//! Certificate authorities and certificates issued from them (rcgen, ECDSA P-256).
//!
//! P-256 is what every consumer here verifies: rustls, Go's crypto/tls (Kubernetes, etcd)
//! and the Kubernetes service-account token signer.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::types::{Certificate, PrivateKey};

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot generate {what}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("generated {what} is not valid PEM: {reason}")]
    Pem {
        what: String,
        reason: crate::error::ValueError,
    },
}

/// A certificate and its key, both PEM.
#[derive(Debug, Clone)]
pub struct CertAndKey {
    pub crt: Certificate,
    pub key: PrivateKey,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Client,
    Server,
    ServerAndClient,
}

fn gen_err(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Generate {
        what: what.to_string(),
        source,
    }
}

fn to_pem(what: &str, crt: String, key: String) -> Result<CertAndKey, PkiError> {
    let bad = |reason: crate::error::ValueError| PkiError::Pem {
        what: what.to_string(),
        reason,
    };
    Ok(CertAndKey {
        crt: crt.parse().map_err(bad)?,
        key: key.parse().map_err(bad)?,
    })
}

/// A new self-signed CA valid for `years` years.
pub fn new_ca(
    common_name: &str,
    organization: Option<&str>,
    years: i64,
) -> Result<CertAndKey, PkiError> {
    let what = format!("CA {common_name:?}");
    let key = KeyPair::generate().map_err(gen_err(&what))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    // Back-dated so a node whose clock is a little behind still accepts it.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(365 * years);
    let cert = params.self_signed(&key).map_err(gen_err(&what))?;
    to_pem(&what, cert.pem(), key.serialize_pem())
}

/// Issues a leaf certificate from `ca`, valid for `days` days.
pub fn issue(
    ca: &CertAndKey,
    common_name: &str,
    organizations: &[&str],
    sans: &[String],
    usage: Usage,
    days: i64,
) -> Result<CertAndKey, PkiError> {
    let what = format!("certificate {common_name:?}");
    let ca_key = KeyPair::from_pem(ca.key.0.as_str()).map_err(gen_err(&what))?;
    let issuer = Issuer::from_ca_cert_pem(ca.crt.0.as_str(), ca_key).map_err(gen_err(&what))?;
    let key = KeyPair::generate().map_err(gen_err(&what))?;
    let mut params = CertificateParams::new(sans.to_vec()).map_err(gen_err(&what))?;
    let mut dn = DistinguishedName::new();
    for o in organizations {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match usage {
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::ServerAndClient => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
    let cert = params.signed_by(&key, &issuer).map_err(gen_err(&what))?;
    to_pem(&what, cert.pem(), key.serialize_pem())
}

/// The public half of a private key, PEM (the API server verifies service-account tokens
/// with it).
pub fn public_key_pem(key: &PrivateKey) -> Result<String, PkiError> {
    KeyPair::from_pem(key.0.as_str())
        .map(|k| k.public_key_pem())
        .map_err(gen_err("the public key"))
}

/// A new bare private key (the Kubernetes service-account signing key).
pub fn new_key(what: &str) -> Result<PrivateKey, PkiError> {
    let key = KeyPair::generate().map_err(gen_err(what))?;
    key.serialize_pem().parse().map_err(|reason| PkiError::Pem {
        what: what.to_string(),
        reason,
    })
}

/// A new key and a certificate signing request for it (PEM, PKCS#10) with the subject
/// `O=organizations…, CN=common_name` and no extensions: the signer decides the rest (a
/// kubelet's client certificate, signed by the controller manager).
pub fn request(
    common_name: &str,
    organizations: &[&str],
) -> Result<(String, PrivateKey), PkiError> {
    let what = format!("certificate request {common_name:?}");
    let key = KeyPair::generate().map_err(gen_err(&what))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for o in organizations {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(gen_err(&what))?;
    let key = key
        .serialize_pem()
        .parse()
        .map_err(|reason| PkiError::Pem {
            what: what.clone(),
            reason,
        })?;
    Ok((csr, key))
}
