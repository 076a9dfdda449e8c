//! The API end to end over a real unix socket, with a real supervisor and real processes; only
//! the power switch is fake.

use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_api::machine as pb;
use basalt_api::machine::machine_client::MachineClient;
use tonic::Code;

use super::*;
use crate::configstate::ConfigState;
use crate::logring::Logs;
use crate::node::{Node, Paths};
use crate::process::ProcessSpec;
use crate::sequence::{FakePower, Sequencer};
use crate::supervisor::{ServiceDef, Supervisor};

const CP: &str = include_str!("../../../config/testdata/valid/controlplane.yaml");

struct Fixture {
    dir: tempfile::TempDir,
    client: MachineClient<tonic::transport::Channel>,
    power: Arc<FakePower>,
    node: Node,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = basalt_resources::Store::default();
    let logs = Logs::new(None, 100, 0);
    let sup = Supervisor::new(store.clone(), logs.clone(), None);
    let power = Arc::new(FakePower::default());
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("x")).unwrap();
    let node = Node {
        store: store.clone(),
        logs,
        sup: sup.clone(),
        config: ConfigState::new(
            dir.path().join("state"),
            basalt_config::Mode::Metal,
            store.clone(),
        ),
        seq: Sequencer::new(store),
        power: power.clone(),
        paths: Paths {
            wipe_on_reset: vec![data],
        },
        booted: Instant::now(),
    };
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
                == crate::supervisor::State::Running)
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
                == crate::supervisor::State::Running)
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
        crate::supervisor::State::Stopped
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
        match f.client.reset(pb::ResetRequest { graceful: true }).await {
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
    assert!(!f.node.paths.wipe_on_reset[0].exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apid_forwards_and_holds_maintenance_mode_to_three_methods() {
    let f = fixture().await;
    let sock = f.dir.path().join("api.sock");
    for maintenance in [true, false] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let o = crate::apid::Options {
            listen: addr,
            init_socket: sock.clone(),
            maintenance,
        };
        let server = tokio::spawn(crate::apid::serve_on(listener, o));
        let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = MachineClient::new(ch);
        let v = c.version(pb::VersionRequest {}).await.unwrap().into_inner();
        assert_eq!(v.mode, "maintenance");
        let r = c.service_list(pb::ServiceListRequest {}).await;
        if maintenance {
            let e = r.unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied);
            assert!(
                e.message().contains("not available in maintenance mode"),
                "{}",
                e.message()
            );
        } else {
            assert!(
                r.unwrap()
                    .into_inner()
                    .services
                    .iter()
                    .any(|s| s.id == "sleeper")
            );
            // Streams pass through too.
            let mut st = c
                .logs(pb::LogsRequest {
                    id: "sleeper".into(),
                    follow: true,
                    tail_lines: 0,
                })
                .await
                .unwrap()
                .into_inner();
            f.node.logs.ring("sleeper").push("through apid");
            loop {
                if st.message().await.unwrap().unwrap().line == "through apid" {
                    break;
                }
            }
        }
        server.abort();
    }
}
