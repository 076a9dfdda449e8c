//! apid as the config and the node's addresses say: in maintenance mode without a config;
//! with one, serving a certificate from the config's OS CA that names the node's addresses.
//! A controller on the resource runtime: its inputs are `ActiveConfig` and `AddressStatus`, its
//! output the `NodeCertificate` resource (what apid serves).
//!
//! A new CA or new `certSANs` restarts apid with the new certificate (its client verifier
//! changes too). A new address (a DHCP lease, an address a config change adds) only reissues
//! the certificate: apid reloads it on SIGHUP, so connections and calls under way are not cut.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use basalt_apid as apid;
use basalt_config::Config;
use basalt_config::resource::ActiveConfig;
use basalt_networkd::spec::AddressStatus;
use basalt_resources::{Context, Controller, Kind, Output, ReconcileError, Spec, Store};
use basalt_supervisor::process::ProcessSpec;
use basalt_supervisor::{self as supervisor, Dependency, Health, ServiceDef, Supervisor};
use futures::future::BoxFuture;
use serde::Serialize;

/// The node's addresses as the certificate names them: the kernel's now and networkd's
/// `AddressStatus` (either may be a moment ahead of the other at boot), loopback left out.
fn node_addresses(store: &Store) -> Vec<String> {
    let mut all: BTreeSet<String> = basalt_sys::netif::addresses_text().into_iter().collect();
    for (_, a) in store.list::<AddressStatus>() {
        if a.link != "lo" {
            all.insert(a.address.addr().to_string());
        }
    }
    all.into_iter().collect()
}

/// What apid serves, as a resource (`apid/NodeCertificate`, id `node`): maintenance mode, or
/// the node certificate and the addresses it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeCertificate {
    pub maintenance: bool,
    pub addresses: Vec<String>,
}

impl Spec for NodeCertificate {
    const TYPE: &'static str = "NodeCertificate";
    const NAMESPACE: &'static str = "apid";
}

/// The controller that keeps apid as the active config and the node's addresses say.
pub(crate) struct ApidCertificate {
    sup: Arc<Supervisor>,
    /// What apid was last started for: None = maintenance, Some(CA + SANs).
    started: Option<Option<String>>,
    /// The addresses its certificate names.
    named: Vec<String>,
}

impl ApidCertificate {
    pub fn new(sup: Arc<Supervisor>) -> Self {
        ApidCertificate {
            sup,
            started: None,
            named: Vec::new(),
        }
    }

    async fn pass(&mut self, cx: &mut Context) -> Result<(), IssueError> {
        let store = cx.store().clone();
        let cfg = basalt_config::resource::active(&store);
        let want = cfg.as_ref().map(|c| {
            format!(
                "{}{:?}",
                c.secrets().certs.os.crt.0.as_str(),
                c.machine().cert_sans
            )
        });
        let sup = &self.sup;
        if self.started.as_ref() != Some(&want) {
            if self.started.is_some() {
                // Let the reply to the ApplyConfiguration that got us here leave through the
                // apid about to be replaced.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            sup.set_condition(supervisor::CONFIG, cfg.is_some());
            if cfg.is_none() {
                sup.set_condition(supervisor::NODE_CERT, false);
            }
            match &cfg {
                None => {
                    sup.add(apid_service(true)).await;
                    cx.apply(
                        NODE,
                        NodeCertificate {
                            maintenance: true,
                            addresses: Vec::new(),
                        },
                    )?;
                    // The banner names the node's addresses: wait for the boot network.
                    sup.wait_condition(supervisor::NETWORK, Duration::from_secs(30))
                        .await;
                    maintenance_banner();
                }
                Some(c) => {
                    if self.started.as_ref().is_some_and(Option::is_none) {
                        tracing::info!("config present: leaving maintenance mode");
                    }
                    sup.wait_condition(supervisor::NETWORK, Duration::from_secs(30))
                        .await;
                    // A certificate issued by a clock far off is not valid yet (or no longer)
                    // where the clock is right: wait for time sync (bounded by its bootTimeout).
                    if !sup
                        .wait_condition(supervisor::TIME, Duration::from_secs(900))
                        .await
                    {
                        tracing::warn!("apid certificate: time is still not synced; issuing it");
                    }
                    let named = node_addresses(&store);
                    issue(c, &named)?;
                    tracing::info!(addresses = %named.join(", "), "apid certificate issued from the OS CA");
                    sup.set_condition(supervisor::NODE_CERT, true);
                    sup.add(apid_service(false)).await;
                    cx.apply(
                        NODE,
                        NodeCertificate {
                            maintenance: false,
                            addresses: named.clone(),
                        },
                    )?;
                    self.named = named;
                }
            }
            self.started = Some(want);
        } else if let Some(c) = &cfg
            && node_addresses(&store) != self.named
        {
            // Addresses come in bursts (a lease: address, routes, a second family): one
            // certificate for the burst.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = node_addresses(&store);
            issue(c, &now)?;
            // An apid still starting reads the new files itself; one that answers is told.
            sup.wait_for("apid", Duration::from_secs(30), |s, h| {
                s == supervisor::State::Running && h == supervisor::HealthState::Healthy
            })
            .await;
            match sup.signal("apid", nix::sys::signal::Signal::SIGHUP) {
                Ok(_) => tracing::info!(
                    addresses = %now.join(", "),
                    "apid certificate reissued for the node's addresses"
                ),
                Err(e) => tracing::info!(
                    addresses = %now.join(", "),
                    error = %e,
                    "apid certificate reissued for the node's addresses; apid not told"
                ),
            }
            cx.apply(
                NODE,
                NodeCertificate {
                    maintenance: false,
                    addresses: now.clone(),
                },
            )?;
            self.named = now;
        }
        Ok(())
    }
}

/// The id of the one `NodeCertificate` resource.
const NODE: &str = "node";

impl Controller for ApidCertificate {
    fn name(&self) -> &str {
        "apid-certificate"
    }

    fn inputs(&self) -> Vec<Kind> {
        vec![Kind::of::<ActiveConfig>(), Kind::of::<AddressStatus>()]
    }

    fn outputs(&self) -> Vec<Output> {
        vec![Output::exclusive::<NodeCertificate>()]
    }

    fn reconcile<'a>(
        &'a mut self,
        cx: &'a mut Context,
    ) -> BoxFuture<'a, Result<(), ReconcileError>> {
        Box::pin(async move { self.pass(cx).await.map_err(Into::into) })
    }
}

/// Why the node's certificate is not there.
#[derive(Debug, thiserror::Error)]
enum IssueError {
    #[error("apid certificate not issued")]
    Issue(#[from] apid::ApidError),
    #[error("apid certificate not issued: cannot write {}", apid::PKI_DIR)]
    Write(#[source] std::io::Error),
    #[error(transparent)]
    Record(#[from] basalt_resources::RuntimeError),
}

/// Issues the node's certificate for `addresses` and writes it where apid reads it.
fn issue(c: &Config, addresses: &[String]) -> Result<(), IssueError> {
    apid::Pki::issue(c, addresses)?
        .write(Path::new(apid::PKI_DIR))
        .map_err(IssueError::Write)
}

fn apid_service(maintenance: bool) -> ServiceDef {
    let mut args = Vec::new();
    if maintenance {
        args.push("--maintenance".to_string());
    }
    let process = ProcessSpec {
        program: "/sbin/init".into(),
        arg0: Some("apid".into()),
        args,
        env: vec![("PATH".into(), "/usr/bin:/usr/sbin".into())],
        // apid binds an unprivileged port and talks to a socket its uid owns: it keeps no
        // capability.
        keep_caps: Some(Vec::new()),
        ..ProcessSpec::default()
    };
    let mut def = ServiceDef::new("apid", process);
    def.depends = vec![Dependency::Condition(supervisor::NETWORK)];
    def.stop_timeout = Duration::from_secs(5);
    def.health = Some(Health {
        check: Arc::new(|| {
            Box::pin(async {
                tokio::net::TcpStream::connect(("127.0.0.1", basalt_api::APID_PORT))
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("port {}: {e}", basalt_api::APID_PORT).into())
            })
        }),
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(2),
    });
    def
}

fn maintenance_banner() {
    let addrs = basalt_sys::netif::addresses_text();
    tracing::info!(
        "maintenance mode: no config; apply one with `osctl apply-config --insecure -n <address> -f <file>` on {}",
        if addrs.is_empty() {
            "(no address yet)".to_string()
        } else {
            addrs
                .iter()
                .map(|a| match a.contains(':') {
                    true => format!("[{a}]:{}", basalt_api::APID_PORT),
                    false => format!("{a}:{}", basalt_api::APID_PORT),
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
}
