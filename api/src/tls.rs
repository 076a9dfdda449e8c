//! How clients and apid speak TLS: TLS 1.3 only, ALPN `h2`, ECDSA P-256 certificates from the
//! OS CA. One place for both sides so osctl, apid and apid-to-apid proxying agree.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} is not a PEM certificate")]
    Certificate { what: String },
    #[error("{what} is not a PEM private key")]
    Key { what: String },
    #[error("{what}")]
    Rustls {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot build the client certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("{0:?} is not a host name or an IP address")]
    ServerName(String),
}

/// A certificate chain and its key, PEM.
#[derive(Debug, Clone)]
pub struct Identity {
    pub crt: String,
    pub key: String,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(what: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let v: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Certificate { what: what.into() })?;
    if v.is_empty() {
        return Err(TlsError::Certificate { what: what.into() });
    }
    Ok(v)
}

fn key(what: &str, pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| TlsError::Key { what: what.into() })
}

fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs("the CA certificate", ca_pem)? {
        roots.add(c).map_err(|source| TlsError::Rustls {
            what: "the CA certificate is not usable".into(),
            source,
        })?;
    }
    Ok(roots)
}

fn rustls_err(what: &str) -> impl FnOnce(rustls::Error) -> TlsError + '_ {
    move |source| TlsError::Rustls {
        what: what.into(),
        source,
    }
}

/// apid's server side: `client_ca` set → a client certificate from that CA is required;
/// `None` (maintenance mode) → no client authentication.
pub fn server_config(
    identity: &Identity,
    client_ca: Option<&str>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err("TLS 1.3 is not available"))?;
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            )
            .build()?,
        ),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(
            certs("the serving certificate", &identity.crt)?,
            key("the serving key", &identity.key)?,
        )
        .map_err(rustls_err("the serving certificate and key do not match"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client that checks the server against `ca` and presents `identity`.
pub fn client_config(ca: &str, identity: &Identity) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err("TLS 1.3 is not available"))?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(
            certs("the client certificate", &identity.crt)?,
            key("the client key", &identity.key)?,
        )
        .map_err(rustls_err("the client certificate and key do not match"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client that checks the server against `ca` and presents no certificate (KubeSpan's
/// discovery client: the server is open, the records are sealed).
pub fn server_checking_client_config(ca: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err("TLS 1.3 is not available"))?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client for web servers (a config server at boot): the server checked against `ca_pem`
/// (one or more PEM certificates), TLS 1.2 or 1.3, HTTP/1.1.
pub fn web_client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rustls_err("TLS 1.2 and 1.3 are not available"))?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client for a node in maintenance mode: it has no certificate from the OS CA yet, so the
/// server is not checked (`osctl --insecure`). Still TLS 1.3: the config is not sent in clear.
pub fn insecure_client_config() -> Arc<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider())))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}

/// Accepts any server certificate (but still checks the handshake signatures).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Splits `host`, `host:port`, `[v6]:port` or a bare IPv6 address into host and port
/// (`default_port` when none is given).
pub fn split_endpoint(endpoint: &str, default_port: u16) -> Result<(String, u16), TlsError> {
    let bad = || TlsError::ServerName(endpoint.to_string());
    if let Ok(ip) = endpoint.parse::<std::net::IpAddr>() {
        return Ok((ip.to_string(), default_port));
    }
    if let Ok(sa) = endpoint.parse::<std::net::SocketAddr>() {
        return Ok((sa.ip().to_string(), sa.port()));
    }
    match endpoint.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((h.to_string(), p.parse().map_err(|_| bad())?)),
        Some(_) => Err(bad()),
        None if endpoint.is_empty() => Err(bad()),
        None => Ok((endpoint.to_string(), default_port)),
    }
}

/// A lazily connecting gRPC channel to `endpoint` over TLS with `cfg`. The server name checked
/// against the certificate is the endpoint's host (an IP address or a DNS name).
pub fn channel(
    endpoint: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<tonic::transport::Channel, TlsError> {
    channel_in(endpoint, cfg, None)
}

/// [`channel`], its connections made from inside the network namespace `netns` (a name under
/// `/run/netns`, or a path) when one is given: how the host reaches nodes on a segment that
/// lives in a namespace of its own (local QEMU clusters). Needs CAP_SYS_ADMIN.
pub fn channel_in(
    endpoint: &str,
    cfg: Arc<rustls::ClientConfig>,
    netns: Option<&str>,
) -> Result<tonic::transport::Channel, TlsError> {
    let netns: Option<Arc<std::path::PathBuf>> = netns.map(|n| {
        Arc::new(if n.contains('/') {
            n.into()
        } else {
            std::path::Path::new("/run/netns").join(n)
        })
    });
    let (host, port) = split_endpoint(endpoint, crate::APID_PORT)?;
    let name =
        ServerName::try_from(host.clone()).map_err(|_| TlsError::ServerName(host.clone()))?;
    let uri = if host.contains(':') {
        format!("http://[{host}]:{port}")
    } else {
        format!("http://{host}:{port}")
    };
    let ep = crate::endpoint(
        tonic::transport::Endpoint::from_shared(uri)
            .map_err(|_| TlsError::ServerName(endpoint.to_string()))?,
    )
    .connect_timeout(std::time::Duration::from_secs(10))
    // A connection whose peer went away without a word (a node restarted, its address
    // moved) is noticed within 20 s rather than hanging a call forever.
    .http2_keep_alive_interval(std::time::Duration::from_secs(10))
    .keep_alive_timeout(std::time::Duration::from_secs(10))
    .keep_alive_while_idle(true);
    let connector = tokio_rustls::TlsConnector::from(cfg);
    Ok(
        ep.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let (host, connector, name) = (host.clone(), connector.clone(), name.clone());
            let netns = netns.clone();
            async move {
                let tcp = match netns {
                    None => tokio::net::TcpStream::connect((host.as_str(), port)).await?,
                    Some(ns) => connect_in(&ns, &host, port).await?,
                };
                let _ = tcp.set_nodelay(true);
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        })),
    )
}

/// A TCP connection made from inside the network namespace at `netns`: a thread of its own
/// enters the namespace (a socket belongs to the namespace it was made in, wherever it is used
/// afterwards), connects, and hands the stream back.
pub async fn connect_in(
    netns: &std::path::Path,
    host: &str,
    port: u16,
) -> std::io::Result<tokio::net::TcpStream> {
    use std::io::{Error, ErrorKind};
    let (netns, host) = (netns.to_path_buf(), host.to_string());
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let r = (|| {
            let ns = std::fs::File::open(&netns).map_err(|e| {
                Error::new(
                    e.kind(),
                    format!("network namespace {}: {e}", netns.display()),
                )
            })?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                Error::other(format!(
                    "cannot enter network namespace {}: {e}",
                    netns.display()
                ))
            })?;
            let addrs = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))?;
            let mut last = Error::new(ErrorKind::NotFound, format!("{host}: no address"));
            for a in addrs {
                match std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(10)) {
                    Ok(s) => {
                        s.set_nonblocking(true)?;
                        return Ok(s);
                    }
                    Err(e) => last = e,
                }
            }
            Err(last)
        })();
        let _ = tx.send(r);
    });
    let std = rx
        .await
        .map_err(|_| Error::other("the namespace connector thread died"))??;
    tokio::net::TcpStream::from_std(std)
}

/// The Organizations in a certificate's subject.
pub fn organizations(cert: &CertificateDer<'_>) -> Vec<String> {
    match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, c)) => c
            .subject()
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_string))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_split_into_host_and_port() {
        let s = |e| split_endpoint(e, 50000).unwrap();
        assert_eq!(s("10.5.0.2"), ("10.5.0.2".into(), 50000));
        assert_eq!(s("10.5.0.2:6000"), ("10.5.0.2".into(), 6000));
        assert_eq!(s("node1"), ("node1".into(), 50000));
        assert_eq!(s("node1:7"), ("node1".into(), 7));
        assert_eq!(s("fd00::1"), ("fd00::1".into(), 50000));
        assert_eq!(s("[fd00::1]:9"), ("fd00::1".into(), 9));
        assert!(split_endpoint("node1:port", 50000).is_err());
        assert!(split_endpoint("", 50000).is_err());
    }
}
