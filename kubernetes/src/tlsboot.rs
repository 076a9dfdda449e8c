//! The kubelet's TLS bootstrap, done by init before the kubelet starts: a new key, a
//! certificate signing request for `system:node:<name>` sent with the bootstrap token, the
//! signed certificate (the controller manager approves and signs it) written where the kubelet
//! keeps its client certificate, and the kubelet's kubeconfig pointing at it.
//!
//! Why not let the kubelet do it: started before the token works, the kubelet fails its first
//! request and backs off; started with only the bootstrap kubeconfig, it runs anonymously
//! while it waits, its node registration fails and backs off to 7 s steps. Done here, the
//! kubelet starts with its identity and registers at once; the request is retried every
//! second. The kubelet still rotates the certificate itself (`rotateCertificates`), and falls
//! back to the bootstrap kubeconfig should the certificate expire while the node is off.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use basalt_config::Config;
use base64::Engine as _;

use super::https::{Https, HttpsError};
use super::pki;
use crate::layout::{KUBELET_CLIENT_READY as CLIENT_READY, KUBELET_ROOT as ROOT_DIR};
use basalt_supervisor::Supervisor;

/// The kubelet's client certificate and key (one PEM file, the kubelet's own layout: a link to
/// `kubelet-client-<time>.pem`).
pub const KUBELET_CLIENT: &str = "/var/lib/kubelet/pki/kubelet-client-current.pem";

const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";

/// The `CertificateSigningRequest` object for a PEM request.
pub fn csr_object(request_pem: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": { "generateName": "node-csr-" },
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(request_pem),
            "signerName": SIGNER,
            // What the controller manager approves for a kubelet's client certificate.
            "usages": ["digital signature", "key encipherment", "client auth"],
        },
    })
}

/// Why the kubelet has no client certificate yet: each is a reason to try again.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot make the certificate request")]
    Request(#[source] basalt_config::pki::PkiError),
    #[error(transparent)]
    Api(#[from] HttpsError),
    #[error("the API server does not know the bootstrap token yet")]
    TokenUnknown,
    #[error("the bootstrap token may not ask for certificates yet")]
    NotAllowed,
    #[error("certificate request {0} was deleted")]
    Deleted(String),
    #[error("the request was {verdict}: {reason}")]
    Refused { verdict: String, reason: String },
    #[error("the issued certificate is not base64")]
    NotBase64(#[source] base64::DecodeError),
    #[error("the issued certificate is not PEM text")]
    NotText,
}

/// What a CSR's status says: `Ok(Some(pem))` issued, `Ok(None)` pending, `Err` denied/failed.
pub fn issued(csr: &serde_json::Value) -> Result<Option<String>, BootstrapError> {
    for c in csr["status"]["conditions"].as_array().into_iter().flatten() {
        let t = c["type"].as_str().unwrap_or_default();
        if (t == "Denied" || t == "Failed") && c["status"] != "False" {
            return Err(BootstrapError::Refused {
                verdict: t.to_lowercase(),
                reason: c["message"]
                    .as_str()
                    .unwrap_or("no reason given")
                    .to_string(),
            });
        }
    }
    match csr["status"]["certificate"].as_str() {
        Some(b) if !b.is_empty() => {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(BootstrapError::NotBase64)?;
            String::from_utf8(pem)
                .map(Some)
                .map_err(|_| BootstrapError::NotText)
        }
        _ => Ok(None),
    }
}

/// The kubelet's kubeconfig: its client certificate by path, so a rotated one is used.
pub fn kubeconfig(cluster: &str, server: &str, ca_pem: &str) -> String {
    pki::kubeconfig(
        cluster,
        server,
        ca_pem,
        "kubelet",
        &pki::Credential::Files {
            crt: KUBELET_CLIENT.into(),
            key: KUBELET_CLIENT.into(),
        },
    )
}

/// Writes the certificate and key as `dir/kubelet-client-<time>.pem` and points
/// `kubelet-client-current.pem` at it (both atomic).
pub fn write_client(dir: &Path, crt_pem: &str, key_pem: &str) -> std::io::Result<PathBuf> {
    let stamp = time::OffsetDateTime::now_utc();
    let name = format!(
        "kubelet-client-{:04}-{:02}-{:02}-{:02}-{:02}-{:02}.pem",
        stamp.year(),
        u8::from(stamp.month()),
        stamp.day(),
        stamp.hour(),
        stamp.minute(),
        stamp.second()
    );
    let file = dir.join(&name);
    let mut data = crt_pem.trim_end().to_string();
    data.push('\n');
    data.push_str(key_pem.trim_end());
    data.push('\n');
    basalt_sys::fs::atomic_write(&file, data.as_bytes(), 0o600)?;
    let link = dir.join("kubelet-client-current.pem");
    let tmp = dir.join(".kubelet-client-current.pem.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&name, &tmp)?;
    std::fs::rename(&tmp, &link)?;
    Ok(file)
}

/// One attempt: send a request, wait for it to be issued (watched). `Err` says
/// why not yet (the token unknown, not allowed yet, the API server not answering, ...).
async fn attempt(
    api: &Https,
    node: &str,
    last: &mut String,
) -> Result<(String, String), BootstrapError> {
    let (req, key) = basalt_config::pki::request(&format!("system:node:{node}"), &["system:nodes"])
        .map_err(BootstrapError::Request)?;
    let body = serde_json::to_vec(&csr_object(&req)).map_err(HttpsError::Json)?;
    let r = api
        .request(http::Method::POST, CSRS, Some(("application/json", body)))
        .await?;
    let name = match r.status.as_u16() {
        200..=299 => r.json()?["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        401 => return Err(BootstrapError::TokenUnknown),
        403 => return Err(BootstrapError::NotAllowed),
        _ => {
            return Err(match r.json() {
                Err(e) => e.into(),
                Ok(_) => BootstrapError::Refused {
                    verdict: "answered".into(),
                    reason: format!("{} with no name", r.status),
                },
            });
        }
    };
    note(
        last,
        &format!("sent certificate request {name}: waiting for it to be signed"),
    );
    // Watched by name: the watch starts with the request as it is (signed already, perhaps),
    // then each change; it is renewed when the server ends it, and after an error a second on.
    let path = format!("{CSRS}?fieldSelector=metadata.name%3D{name}&watch=1&timeoutSeconds=60");
    loop {
        let mut watch = match api.watch(&path).await {
            Ok(w) => w,
            Err(e) => {
                note(last, &basalt_sys::error_chain(&e));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let event = match watch.next().await {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(e) => {
                    note(last, &basalt_sys::error_chain(&e));
                    break;
                }
            };
            match event["type"].as_str() {
                Some("DELETED") => return Err(BootstrapError::Deleted(name)),
                Some("ADDED" | "MODIFIED") => {
                    if let Some(crt) = issued(&event["object"])? {
                        return Ok((crt, key.0.as_str().to_string()));
                    }
                }
                _ => {}
            }
        }
    }
}

fn note(last: &mut String, what: &str) {
    if what != last {
        tracing::info!("kubelet: {what}");
        *last = what.to_string();
    }
}

/// Gets the kubelet its client certificate (unless it has one from an earlier boot), then
/// sets [`CLIENT_READY`].
pub async fn run(sup: Arc<Supervisor>, config: Arc<Config>, pki_dir: PathBuf, node: String) {
    let kubeconfig_path = Path::new(ROOT_DIR).join("kubeconfig");
    if Path::new(KUBELET_CLIENT).exists() && kubeconfig_path.exists() {
        sup.set_condition(CLIENT_READY, true);
        return;
    }
    let e = &config.cluster().control_plane.endpoint;
    let ca = match std::fs::read_to_string(pki_dir.join("ca.crt")) {
        Ok(c) => c,
        Err(err) => {
            tracing::warn!(error = %err, "kubelet: cannot read the cluster CA");
            return;
        }
    };
    let token = config.secrets().bootstrap_token.as_str().to_string();
    let api = match Https::with_token(&e.host, e.port, &ca, &token) {
        Ok(a) => a.with_timeout(Duration::from_secs(5)),
        Err(err) => {
            tracing::warn!(error = %basalt_sys::error_chain(&err), "kubelet: TLS bootstrap not done");
            return;
        }
    };
    let mut last = String::new();
    let (crt, key) = loop {
        match attempt(&api, &node, &mut last).await {
            Ok(pair) => break pair,
            Err(err) => {
                note(
                    &mut last,
                    &format!("waiting: {}", basalt_sys::error_chain(&err)),
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let dir = Path::new(KUBELET_CLIENT)
        .parent()
        .unwrap_or(Path::new(ROOT_DIR));
    let written = write_client(dir, &crt, &key).and_then(|_| {
        let kc = kubeconfig(
            &config.cluster().name.to_string(),
            &pki::endpoint_url(&config),
            &ca,
        );
        basalt_sys::fs::atomic_write(&kubeconfig_path, kc.as_bytes(), 0o600)
    });
    match written {
        Ok(()) => {
            tracing::info!(
                %node,
                "kubelet: client certificate for system:node issued: starting the kubelet"
            );
            sup.set_condition(CLIENT_READY, true);
        }
        Err(err) => tracing::warn!(
            dir = %dir.display(),
            error = %err,
            "kubelet: cannot write its client certificate"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_a_valid_pkcs10_for_the_node_and_the_object_carries_it() {
        let (req, key) = basalt_config::pki::request("system:node:w1", &["system:nodes"]).unwrap();
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("r.csr"), &req).unwrap();
        // Another implementation checks ours: the signature verifies, the subject is right.
        let o = std::process::Command::new("openssl")
            .args(["req", "-in", "r.csr", "-noout", "-verify", "-subject"])
            .current_dir(d.path())
            .output()
            .expect("openssl is installed (hack/test installs it)");
        let out =
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{out}");
        assert!(out.contains("verify OK"), "{out}");
        assert!(
            out.contains("O = system:nodes, CN = system:node:w1"),
            "{out}"
        );
        assert!(key.0.as_str().contains("PRIVATE KEY"));
        let obj = csr_object(&req);
        assert_eq!(obj["spec"]["signerName"], SIGNER);
        let back = base64::engine::general_purpose::STANDARD
            .decode(obj["spec"]["request"].as_str().unwrap())
            .unwrap();
        assert_eq!(back, req.as_bytes());
    }

    #[test]
    fn a_csr_status_is_pending_issued_or_denied() {
        let pending = serde_json::json!({ "status": {} });
        assert_eq!(issued(&pending).unwrap(), None);
        let approved_not_signed = serde_json::json!({ "status": {
            "conditions": [{ "type": "Approved", "status": "True" }] } });
        assert_eq!(issued(&approved_not_signed).unwrap(), None);
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let signed = serde_json::json!({ "status": {
            "conditions": [{ "type": "Approved", "status": "True" }],
            "certificate": base64::engine::general_purpose::STANDARD.encode(pem) } });
        assert_eq!(issued(&signed).unwrap(), Some(pem.to_string()));
        let denied = serde_json::json!({ "status": {
            "conditions": [{ "type": "Denied", "status": "True", "message": "not a node" }] } });
        let e = issued(&denied).unwrap_err().to_string();
        assert!(e.contains("denied: not a node"), "{e}");
    }

    #[test]
    fn the_client_file_holds_both_halves_and_current_points_at_it() {
        let d = tempfile::tempdir().unwrap();
        let first = write_client(d.path(), "CRT1\n", "KEY1").unwrap();
        let current = d.path().join("kubelet-client-current.pem");
        assert_eq!(std::fs::read_to_string(&current).unwrap(), "CRT1\nKEY1\n");
        assert_eq!(
            std::fs::read_link(&current).unwrap(),
            Path::new(first.file_name().unwrap())
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&first).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A second one replaces the link atomically.
        std::thread::sleep(Duration::from_millis(1100));
        write_client(d.path(), "CRT2\n", "KEY2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&current).unwrap(), "CRT2\nKEY2\n");
        let kc = kubeconfig("c", "https://1.2.3.4:6443", "CA");
        assert!(
            kc.contains(&format!("client-certificate: {KUBELET_CLIENT}")),
            "{kc}"
        );
        assert!(
            kc.contains(&format!("client-key: {KUBELET_CLIENT}")),
            "{kc}"
        );
    }
}
