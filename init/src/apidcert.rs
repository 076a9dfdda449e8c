//! apid as the config and the node's addresses say: in maintenance mode without a config;
//! with one, serving a certificate from the config's OS CA that names the node's addresses.
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
use basalt_networkd::spec::AddressStatus;
use basalt_resources::{Kind, Store};
use basalt_supervisor::process::ProcessSpec;
use basalt_supervisor::{self as supervisor, Dependency, Health, ServiceDef, Supervisor, tasks};
use tokio::sync::watch;

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

/// Starts the task that keeps apid as the config and the addresses say.
pub fn start(sup: Arc<Supervisor>, store: Store, changes: watch::Receiver<Option<Arc<Config>>>) {
    tasks::supervise("apid-follow", move || {
        follow(sup.clone(), store.clone(), changes.clone())
    });
}

async fn follow(
    sup: Arc<Supervisor>,
    store: Store,
    mut changes: watch::Receiver<Option<Arc<Config>>>,
) {
    // What apid was last started for: None = maintenance, Some(CA + SANs); and the addresses
    // its certificate names.
    let mut last: Option<Option<String>> = None;
    let mut named: Vec<String> = Vec::new();
    let mut addresses = store.watch_kind(Kind::of::<AddressStatus>(), None);
    loop {
        let cfg = changes.borrow_and_update().clone();
        let want = cfg.as_ref().map(|c| {
            format!(
                "{}{:?}",
                c.secrets().certs.os.crt.0.as_str(),
                c.machine().cert_sans
            )
        });
        if last.as_ref() != Some(&want) {
            if last.is_some() {
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
                    // The banner names the node's addresses: wait for the boot network.
                    sup.wait_condition(supervisor::NETWORK, Duration::from_secs(30))
                        .await;
                    maintenance_banner();
                }
                Some(c) => {
                    if last.as_ref().is_some_and(Option::is_none) {
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
                    named = node_addresses(&store);
                    match issue(c, &named) {
                        Ok(()) => {
                            tracing::info!("apid certificate issued from the OS CA");
                            sup.set_condition(supervisor::NODE_CERT, true);
                            sup.add(apid_service(false)).await;
                        }
                        Err(e) => {
                            tracing::warn!("apid not started: {}", basalt_sys::error_chain(&e))
                        }
                    }
                }
            }
            last = Some(want);
        } else if let Some(c) = &cfg {
            let now = node_addresses(&store);
            if now != named {
                match issue(c, &now) {
                    Ok(()) => {
                        // An apid still starting reads the new files itself; one that answers
                        // is told.
                        sup.wait_for("apid", Duration::from_secs(30), |s, h| {
                            s == supervisor::State::Running && h == supervisor::HealthState::Healthy
                        })
                        .await;
                        let signalled = sup.signal("apid", nix::sys::signal::Signal::SIGHUP);
                        tracing::info!(
                            "apid certificate reissued for the node's addresses {}{}",
                            now.join(", "),
                            match signalled {
                                Ok(_) => String::new(),
                                Err(e) => format!(" (apid not told: {e})"),
                            }
                        );
                        named = now;
                    }
                    Err(e) => tracing::warn!(
                        "apid certificate not reissued: {}",
                        basalt_sys::error_chain(&e)
                    ),
                }
            }
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            event = addresses.next() => {
                if let Err(e) = event {
                    // An expired bookmark: start the watch again from what is there now.
                    tracing::warn!("address watch: {e}; watching again");
                    addresses = store.watch_kind(Kind::of::<AddressStatus>(), None);
                }
                // Addresses come in bursts (a lease: address, routes, a second family): one
                // certificate for the burst.
                tokio::time::sleep(Duration::from_millis(500)).await;
                while let Ok(Some(_)) = addresses.try_next() {}
            }
        }
    }
}

/// Why the node's certificate is not there.
#[derive(Debug, thiserror::Error)]
enum IssueError {
    #[error(transparent)]
    Issue(#[from] apid::ApidError),
    #[error("cannot write {}", apid::PKI_DIR)]
    Write(#[source] std::io::Error),
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
