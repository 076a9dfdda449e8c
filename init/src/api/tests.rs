//! The API end to end over a real unix socket, with a real supervisor and real processes; only
//! the power switch is fake.

use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_api::machine as pb;
use basalt_api::machine::machine_client::MachineClient;
use tonic::Code;

use super::*;
use crate::node::Node;
use crate::sequence::FakePower;
use basalt_supervisor::ServiceDef;
use basalt_supervisor::process::ProcessSpec;

const CP: &str = include_str!("../../../config/testdata/valid/controlplane.yaml");

struct Fixture {
    dir: tempfile::TempDir,
    client: MachineClient<tonic::transport::Channel>,
    power: Arc<FakePower>,
    node: Node,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let power = Arc::new(FakePower::default());
    let node = Node::for_tests(dir.path(), power.clone());
    // What /var holds (containerd's images, a pod's volume) and STATE besides the config.
    std::fs::create_dir_all(node.paths.ephemeral.join("lib/containerd/x")).unwrap();
    std::fs::create_dir_all(&node.paths.state).unwrap();
    std::fs::write(node.paths.state.join("kubespan.key"), "k").unwrap();
    let sup = node.sup.clone();
    let mut def = ServiceDef::new(
        "sleeper",
        ProcessSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo hello from sleeper; exec sleep 60".into()],
            ..ProcessSpec::default()
        },
    );
    def.stop_timeout = Duration::from_secs(2);
    sup.add(def).await;
    let sock = dir.path().join("api.sock");
    let api = Api::new(node.clone(), &dir.path().join("no-containerd.sock"));
    let s2 = sock.clone();
    tokio::spawn(async move { serve(api, &s2).await.unwrap() });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sock.exists() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Fixture {
        dir,
        client: MachineClient::new(basalt_api::unix_channel(&sock)),
        power,
        node,
    }
}

fn apply(data: &str, mode: pb::ApplyMode, dry_run: bool) -> pb::ApplyConfigurationRequest {
    pb::ApplyConfigurationRequest {
        data: data.as_bytes().to_vec(),
        mode: mode as i32,
        dry_run,
        try_timeout_seconds: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_then_a_config_through_the_api() {
    let mut f = fixture().await;
    let v = f
        .client
        .version(pb::VersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.mode, "maintenance");
    assert_eq!(v.arch, std::env::consts::ARCH);

    // Every problem comes back, and nothing changes.
    let bad = CP
        .replace("type: controlplane", "type: boss")
        .replace("name: demo", "name: -x-");
    let e = f
        .client
        .apply_configuration(apply(&bad, pb::ApplyMode::NoReboot, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("config has 2 problems"),
        "{}",
        e.message()
    );
    assert!(
        e.message().contains("MachineConfig") && e.message().contains("ClusterConfig"),
        "{}",
        e.message()
    );
    assert!(f.node.config.active().is_none());

    let dry = f
        .client
        .apply_configuration(apply(CP, pb::ApplyMode::NoReboot, true))
        .await
        .unwrap()
        .into_inner();
    assert!(dry.summary.starts_with("dry run"), "{}", dry.summary);
    assert!(
        dry.resource_changes
            .contains(&"+ MachineConfig ClusterConfig".to_string())
    );
    assert!(f.node.config.active().is_none());

    // The dry run's network plan: the exact operations, in order, against this host's kernel
    // (read only), and what would wait. (The fixture runs no networkd, so no other layer.)
    let net = format!(
        "{CP}\n---\napiVersion: v1alpha1\nkind: LinkConfig\nname: lo\naddresses: [127.0.0.1/8, 127.0.0.77/8]\n---\napiVersion: v1alpha1\nkind: LinkConfig\nname: basalt-none0\naddresses: [10.99.0.1/24]\n"
    );
    let dry = f
        .client
        .apply_configuration(apply(&net, pb::ApplyMode::NoReboot, true))
        .await
        .unwrap()
        .into_inner();
    assert!(
        dry.network_plan
            .contains(&"address add 127.0.0.77/8 dev lo".to_string()),
        "{:?}",
        dry.network_plan
    );
    assert!(
        dry.network_waiting
            .contains(&"link basalt-none0 is not present".to_string()),
        "{:?}",
        dry.network_waiting
    );
    assert!(f.node.config.active().is_none());

    let ok = f
        .client
        .apply_configuration(apply(CP, pb::ApplyMode::NoReboot, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.summary, "applied live and saved");
    let v = f
        .client
        .version(pb::VersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.mode, "running");

    // The config is resources now.
    let r = f
        .client
        .get(pb::GetRequest {
            r#type: "mc".into(),
            id: "ClusterConfig".into(),
            namespace: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.r#type, "MachineConfig");
    assert!(r.spec_json.contains("\"name\":\"demo\""), "{}", r.spec_json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_logs_and_resources() {
    let mut f = fixture().await;
    assert!(
        f.node
            .sup
            .wait_for("sleeper", Duration::from_secs(10), |s, _| s
                == basalt_supervisor::State::Running)
            .await
    );
    let list = f
        .client
        .service_list(pb::ServiceListRequest {})
        .await
        .unwrap()
        .into_inner();
    let s = list.services.iter().find(|s| s.id == "sleeper").unwrap();
    assert_eq!(s.state, "running");
    assert!(s.pid > 0);

    // Logs: the line the service printed, then followed lines.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut st = f
            .client
            .logs(pb::LogsRequest {
                id: "sleeper".into(),
                follow: false,
                tail_lines: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let mut lines = Vec::new();
        while let Some(l) = st.message().await.unwrap() {
            lines.push(l.line);
        }
        if lines.contains(&"hello from sleeper".to_string()) {
            break;
        }
        assert!(Instant::now() < deadline, "{lines:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut follow = f
        .client
        .logs(pb::LogsRequest {
            id: "sleeper".into(),
            follow: true,
            tail_lines: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        follow.message().await.unwrap().unwrap().line,
        "hello from sleeper"
    );
    f.node.logs.ring("sleeper").push("a later line");
    assert_eq!(
        follow.message().await.unwrap().unwrap().line,
        "a later line"
    );

    let e = f
        .client
        .logs(pb::LogsRequest {
            id: "nope".into(),
            follow: false,
            tail_lines: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(
        e.message().contains("known logs are") && e.message().contains("sleeper"),
        "{}",
        e.message()
    );

    // Stop and start through the API.
    f.client
        .service_stop(pb::ServiceRequest {
            id: "sleeper".into(),
        })
        .await
        .unwrap();
    let r = f
        .client
        .get(pb::GetRequest {
            r#type: "services".into(),
            id: "sleeper".into(),
            namespace: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.spec_json.contains("\"state\":\"stopped\""),
        "{}",
        r.spec_json
    );
    let mut watch = f
        .client
        .watch(pb::WatchRequest {
            r#type: "Service".into(),
            namespace: String::new(),
            id: "sleeper".into(),
            bootstrap: false,
        })
        .await
        .unwrap()
        .into_inner();
    f.client
        .service_start(pb::ServiceRequest {
            id: "sleeper".into(),
        })
        .await
        .unwrap();
    let ev = watch.message().await.unwrap().unwrap();
    assert_eq!(ev.kind, "updated");
    let e = f
        .client
        .service_stop(pb::ServiceRequest { id: "ghost".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(e.message(), "no service \"ghost\"");

    let e = f
        .client
        .list(pb::ListRequest {
            r#type: "widgets".into(),
            namespace: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let mem = f
        .client
        .memory(pb::MemoryRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(mem.meminfo_kib["MemTotal"] > 0);
    let ps = f
        .client
        .processes(pb::ProcessesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        ps.processes
            .iter()
            .any(|p| p.pid as u32 == std::process::id())
    );
    let m = f
        .client
        .mounts(pb::MountsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(m.mounts.iter().any(|m| m.point == "/"));
    // containerd is not running here: a clear unavailable, not a hang.
    let e = f
        .client
        .images(pb::ImagesRequest {
            namespace: "system".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().starts_with("containerd"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_stops_services_then_reboots_and_reset_wipes() {
    let mut f = fixture().await;
    // Tried, not confirmed: the reboot says the node comes back without it.
    let mut req = apply(CP, pb::ApplyMode::Try, false);
    req.try_timeout_seconds = 600;
    f.client.apply_configuration(req).await.unwrap();
    assert!(
        f.node
            .sup
            .wait_for("sleeper", Duration::from_secs(10), |s, _| s
                == basalt_supervisor::State::Running)
            .await
    );
    let r = f
        .client
        .reboot(pb::RebootRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.summary, "reboot sequence started");
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.power.calls.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no reboot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*f.power.calls.lock().unwrap(), ["reboot"]);
    assert_eq!(
        f.node.sup.state("sleeper").unwrap().0,
        basalt_supervisor::State::Stopped
    );
    let seq = f
        .client
        .get(pb::GetRequest {
            r#type: "sequence".into(),
            id: "reboot".into(),
            namespace: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        seq.spec_json
            .contains("\"name\":\"stop services\",\"state\":\"done\""),
        "{}",
        seq.spec_json
    );
    assert!(
        seq.spec_json.contains("the tried config was not confirmed"),
        "{}",
        seq.spec_json
    );
    assert!(!f.dir.path().join("state/config.yaml").exists());

    // Reset: the config and the data go, and the machine reboots.
    f.power.calls.lock().unwrap().clear();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match f
            .client
            .reset(pb::ResetRequest {
                graceful: true,
                wipe: Vec::new(),
            })
            .await
        {
            Ok(_) => break,
            Err(e) if e.code() == Code::Aborted => {}
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while f.power.calls.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no reboot after reset");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(f.node.config.active().is_none());
    assert!(!f.dir.path().join("state/config.yaml").exists());
    assert!(
        !f.node.paths.state.join("kubespan.key").exists(),
        "STATE wiped"
    );
    assert_eq!(
        std::fs::read_dir(&f.node.paths.ephemeral).unwrap().count(),
        0,
        "EPHEMERAL wiped"
    );
}

/// `reset --wipe EPHEMERAL` keeps the config (the node comes back configured, its /var new);
/// `--wipe STATE` keeps /var; an unknown name is refused before anything happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_wipes_only_what_it_is_told() {
    async fn reset(f: &mut Fixture, wipe: &[&str]) -> std::result::Result<String, tonic::Status> {
        f.power.calls.lock().unwrap().clear();
        let r = f
            .client
            .reset(pb::ResetRequest {
                graceful: false,
                wipe: wipe.iter().map(|s| s.to_string()).collect(),
            })
            .await?
            .into_inner();
        let deadline = Instant::now() + Duration::from_secs(30);
        while f.power.calls.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "no reboot after reset");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(r.summary)
    }
    let mut f = fixture().await;
    f.client
        .apply_configuration(apply(CP, pb::ApplyMode::NoReboot, false))
        .await
        .unwrap();
    let e = reset(&mut f, &["STATE", "swap"]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "wipe \"swap\": expected STATE or EPHEMERAL");
    assert!(f.node.config.active().is_some());

    let s = reset(&mut f, &["ephemeral"]).await.unwrap();
    assert_eq!(s, "reset sequence started (wiping EPHEMERAL)");
    assert!(f.node.config.active().is_some(), "the config stays");
    assert!(f.node.paths.state.join("kubespan.key").exists());
    assert_eq!(
        std::fs::read_dir(&f.node.paths.ephemeral).unwrap().count(),
        0
    );

    std::fs::create_dir_all(f.node.paths.ephemeral.join("log")).unwrap();
    let s = reset(&mut f, &["STATE"]).await.unwrap();
    assert_eq!(s, "reset sequence started (wiping STATE)");
    assert!(f.node.config.active().is_none());
    assert!(!f.node.paths.state.join("kubespan.key").exists());
    assert!(f.node.paths.ephemeral.join("log").exists(), "/var stays");
}

/// An OS CA and certificates from it, as `osctl gen config` and init make them.
struct TestPki {
    ca: basalt_config::pki::CertAndKey,
}

impl TestPki {
    fn new() -> TestPki {
        TestPki {
            ca: basalt_config::pki::new_ca("basalt-os", Some("basalt"), 1).unwrap(),
        }
    }

    fn issue(&self, orgs: &[&str], days: i64, usage: basalt_config::pki::Usage) -> Identity {
        let c = basalt_config::pki::issue(
            &self.ca,
            "test",
            orgs,
            &["127.0.0.1".into(), "localhost".into()],
            usage,
            days,
        )
        .unwrap();
        Identity {
            crt: c.crt.0.as_str().to_string(),
            key: c.key.0.as_str().to_string(),
        }
    }

    fn client(&self, role: &str) -> Identity {
        self.issue(&[role], 30, basalt_config::pki::Usage::Client)
    }

    /// The directory apid reads: the CA and a node certificate.
    fn write_node(&self, dir: &std::path::Path) {
        let node = self.issue(
            &[basalt_api::auth::IMPERSONATOR],
            30,
            basalt_config::pki::Usage::ServerAndClient,
        );
        basalt_apid::Pki {
            ca: self.ca.crt.0.as_str().to_string(),
            node,
        }
        .write(dir)
        .unwrap();
    }
}

use basalt_api::tls::{self, Identity};

async fn start_apid(
    init_socket: std::path::PathBuf,
    maintenance: bool,
    pki: std::path::PathBuf,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::result::Result<(), basalt_apid::ApidError>>,
) {
    start_apid_until(init_socket, maintenance, pki, std::future::pending()).await
}

/// [`start_apid`] that stops (as on SIGTERM) when `stop` completes.
async fn start_apid_until(
    init_socket: std::path::PathBuf,
    maintenance: bool,
    pki: std::path::PathBuf,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::result::Result<(), basalt_apid::ApidError>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let o = basalt_apid::Options {
        listen: addr,
        init_socket,
        maintenance,
        pki,
        limits: Default::default(),
    };
    (addr, tokio::spawn(basalt_apid::serve_on(listener, o, stop)))
}

fn tls_client(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> MachineClient<tonic::transport::Channel> {
    MachineClient::new(tls::channel(&addr.to_string(), cfg).unwrap())
}

/// The fixture's `sleeper` service's log, followed.
async fn follow_sleeper(
    c: &mut MachineClient<tonic::transport::Channel>,
) -> tonic::Streaming<pb::LogLine> {
    c.logs(pb::LogsRequest {
        id: "sleeper".into(),
        follow: true,
        tail_lines: 0,
    })
    .await
    .unwrap()
    .into_inner()
}

fn with_node<T>(msg: T, node: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert(basalt_api::auth::NODE_HEADER, node.parse().unwrap());
    r
}

/// Told to stop (SIGTERM in apid's own process), apid takes no new connection but serves the
/// calls under way — the reply to the Reboot that started a sequence must get out — and cuts
/// what is still open after its grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apid_told_to_stop_finishes_the_calls_under_way_and_takes_no_new_one() {
    let f = fixture().await;
    let pki = TestPki::new();
    let pki_dir = f.dir.path().join("pki");
    pki.write_node(&pki_dir);
    let ca = pki.ca.crt.0.as_str().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = start_apid_until(f.dir.path().join("api.sock"), false, pki_dir, async {
        let _ = stopped.await;
    })
    .await;
    let cfg = tls::client_config(&ca, &pki.client("os:admin")).unwrap();
    let mut st = follow_sleeper(&mut tls_client(addr, cfg.clone())).await;

    let asked = Instant::now();
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The stream under way still carries what comes.
    f.node.logs.ring("sleeper").push("after the stop");
    loop {
        let m = tokio::time::timeout(Duration::from_secs(1), st.message())
            .await
            .expect("the stream under way stopped at once")
            .unwrap()
            .unwrap();
        if m.line == "after the stop" {
            break;
        }
    }
    // A new connection is not taken.
    let mut fresh = tls_client(addr, cfg);
    assert!(fresh.version(pb::VersionRequest {}).await.is_err());
    // The stream, which never ends by itself, is cut after the grace, and apid returns.
    let r = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("apid did not return after its grace");
    r.unwrap().unwrap();
    assert!(
        asked.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        asked.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apid_in_maintenance_mode_is_tls_without_client_certificates_and_three_methods() {
    let f = fixture().await;
    let sock = f.dir.path().join("api.sock");
    let (addr, server) = start_apid(sock, true, f.dir.path().join("none")).await;
    let mut c = tls_client(addr, tls::insecure_client_config());
    let v = c.version(pb::VersionRequest {}).await.unwrap().into_inner();
    assert_eq!(v.mode, "maintenance");
    let e = c.service_list(pb::ServiceListRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("not available in maintenance mode"),
        "{}",
        e.message()
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apid_requires_a_certificate_from_the_os_ca_and_enforces_roles() {
    let mut f = fixture().await;
    f.client
        .apply_configuration(apply(CP, pb::ApplyMode::NoReboot, false))
        .await
        .unwrap();
    let pki = TestPki::new();
    let pki_dir = f.dir.path().join("pki");
    pki.write_node(&pki_dir);
    let ca = pki.ca.crt.0.as_str().to_string();
    let (addr, server) = start_apid(f.dir.path().join("api.sock"), false, pki_dir).await;

    // Admin: reads, streams, and sees secrets.
    let mut admin = tls_client(
        addr,
        tls::client_config(&ca, &pki.client("os:admin")).unwrap(),
    );
    let v = admin
        .version(pb::VersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.mode, "running");
    let mut st = follow_sleeper(&mut admin).await;
    f.node.logs.ring("sleeper").push("through apid");
    loop {
        if st.message().await.unwrap().unwrap().line == "through apid" {
            break;
        }
    }
    let secrets = |c: &mut MachineClient<tonic::transport::Channel>| {
        let mut c = c.clone();
        async move {
            c.get(pb::GetRequest {
                r#type: "machineconfig".into(),
                id: "Secrets".into(),
                namespace: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .spec_json
        }
    };
    let full = secrets(&mut admin).await;
    assert!(full.contains("BEGIN"), "{full}");

    // Reader: reads, but secrets are redacted and control is denied, naming both roles.
    let mut reader = tls_client(
        addr,
        tls::client_config(&ca, &pki.client("os:reader")).unwrap(),
    );
    let red = secrets(&mut reader).await;
    assert!(
        !red.contains("BEGIN") && red.contains("(redacted)"),
        "{red}"
    );
    let e = reader.reboot(pb::RebootRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(
        e.message(),
        "Reboot needs role os:operator or higher; this caller has os:reader"
    );
    // Operator: service control yes, reset no.
    let mut op = tls_client(
        addr,
        tls::client_config(&ca, &pki.client("os:operator")).unwrap(),
    );
    op.service_restart(pb::ServiceRequest {
        id: "sleeper".into(),
    })
    .await
    .unwrap();
    let e = op
        .reset(pb::ResetRequest {
            graceful: true,
            wipe: Vec::new(),
        })
        .await
        .unwrap_err();
    assert!(
        e.message().contains("needs role os:admin"),
        "{}",
        e.message()
    );
    assert!(f.power.calls.lock().unwrap().is_empty());

    // Refused at the handshake: no certificate, an expired one, one from another CA.
    let mut anon = tls_client(addr, tls::insecure_client_config());
    assert!(anon.version(pb::VersionRequest {}).await.is_err());
    let expired = pki.issue(&["os:admin"], -1, basalt_config::pki::Usage::Client);
    let mut old = tls_client(addr, tls::client_config(&ca, &expired).unwrap());
    assert!(old.version(pb::VersionRequest {}).await.is_err());
    let other = TestPki::new();
    let mut foreign = tls_client(
        addr,
        tls::client_config(&ca, &other.client("os:admin")).unwrap(),
    );
    assert!(foreign.version(pb::VersionRequest {}).await.is_err());
    // And a client that does not trust this node's CA refuses the node.
    let mut wrong_ca = tls_client(
        addr,
        tls::client_config(other.ca.crt.0.as_str(), &pki.client("os:admin")).unwrap(),
    );
    assert!(wrong_ca.version(pb::VersionRequest {}).await.is_err());
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apid_proxies_one_hop_to_the_node_named_in_metadata_with_the_callers_role() {
    let (mut f1, mut f2) = (fixture().await, fixture().await);
    for f in [&mut f1, &mut f2] {
        f.client
            .apply_configuration(apply(CP, pb::ApplyMode::NoReboot, false))
            .await
            .unwrap();
    }
    let pki = TestPki::new();
    let ca = pki.ca.crt.0.as_str().to_string();
    let (d1, d2) = (f1.dir.path().join("pki"), f2.dir.path().join("pki"));
    pki.write_node(&d1);
    pki.write_node(&d2);
    let (a1, s1) = start_apid(f1.dir.path().join("api.sock"), false, d1).await;
    let (a2, s2) = start_apid(f2.dir.path().join("api.sock"), false, d2).await;
    f2.node.logs.ring("sleeper").push("on node two");

    let node2 = a2.to_string();
    let mut admin = tls_client(
        a1,
        tls::client_config(&ca, &pki.client("os:admin")).unwrap(),
    );
    let mut st = admin
        .logs(with_node(
            pb::LogsRequest {
                id: "sleeper".into(),
                follow: false,
                tail_lines: 100,
            },
            &node2,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut lines = Vec::new();
    while let Some(l) = st.message().await.unwrap() {
        lines.push(l.line);
    }
    assert!(lines.iter().any(|l| l == "on node two"), "{lines:?}");

    // The target enforces the caller's role, not the proxying node's.
    let mut reader = tls_client(
        a1,
        tls::client_config(&ca, &pki.client("os:reader")).unwrap(),
    );
    let e = reader
        .reboot(with_node(pb::RebootRequest {}, &node2))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let r = reader
        .get(with_node(
            pb::GetRequest {
                r#type: "machineconfig".into(),
                id: "Secrets".into(),
                namespace: String::new(),
            },
            &node2,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(r.spec_json.contains("(redacted)"), "{}", r.spec_json);
    // Unreachable nodes say so, by name.
    let e = admin
        .version(with_node(pb::VersionRequest {}, "127.0.0.1:1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("node 127.0.0.1:1"), "{}", e.message());
    s1.abort();
    s2.abort();
}

#[test]
fn types_are_named_by_their_plurals() {
    assert!(names_type("KubeSpanIdentity", "kubespanidentities"));
    assert!(names_type("KubeSpanIdentity", "kubespanidentity"));
    assert!(names_type("LinkStatus", "linkstatuses"));
    assert!(names_type("AddressSpec", "addressspecs"));
    assert!(names_type("Service", "services"));
    assert!(!names_type("AddressSpec", "addressspeces"));
    assert!(!names_type("KubeSpanIdentity", "kubespanidentitys"));
}

#[test]
fn registry_credentials_are_redacted_for_all_but_admin() {
    use basalt_resources::Spec as _;
    let mut spec = serde_json::json!({
        "name": "10.5.0.1:5000",
        "username": "basalt",
        "password": "s3cret",
        "identityToken": "t0ken",
    });
    super::redact_secrets(
        crate::configstate::ConfigDocument::TYPE,
        "RegistryAuthConfig=10.5.0.1:5000",
        &mut spec,
    );
    assert_eq!(spec["password"], "(redacted)");
    assert_eq!(spec["identityToken"], "(redacted)");
    assert_eq!(spec["username"], "basalt");
    assert_eq!(spec["name"], "10.5.0.1:5000");
}
