//! Time sync against NTP servers on loopback: a small one in the test (a clock a year ahead,
//! or one that never answers) and, in the privileged tier, Debian's chronyd; the node's clock
//! is a fake laid over the real one, so the host's is never touched.

use std::sync::Mutex;

use super::*;
use basalt_supervisor::logring::Logs;

/// The real clock plus an offset the service steps and slews.
#[derive(Debug, Default)]
struct FakeClock {
    offset: Mutex<f64>,
    adjustments: Mutex<Vec<Adjust>>,
}

impl FakeClock {
    fn offset(&self) -> f64 {
        *self.offset.lock().unwrap()
    }
}

impl Clock for FakeClock {
    fn now(&self) -> f64 {
        basalt_sys::clock::now().unwrap() + self.offset()
    }
    fn step(&self, by: f64) -> Result<(), ClockError> {
        *self.offset.lock().unwrap() += by;
        self.adjustments.lock().unwrap().push(Adjust::Step(by));
        Ok(())
    }
    fn slew(&self, by: f64) -> Result<(), ClockError> {
        // A slew is gradual on a real clock; here it lands at once.
        *self.offset.lock().unwrap() += by;
        self.adjustments.lock().unwrap().push(Adjust::Slew(by));
        Ok(())
    }
}

const YEAR: f64 = 365.0 * 86400.0;

/// An NTP server on loopback whose clock is `ahead` seconds ahead of the real one; with
/// `silent`, it reads requests and never answers. Returns its address.
async fn server(ahead: f64, silent: bool) -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            if silent || n < 48 {
                continue;
            }
            let now = basalt_sys::clock::now().unwrap() + ahead;
            let mut p = [0u8; 48];
            p[0] = 4 << 3 | 4;
            p[1] = 2;
            p[24..32].copy_from_slice(&buf[40..48]);
            p[32..40].copy_from_slice(&ntp::Timestamp::from_unix(now).0.to_be_bytes());
            p[40..48].copy_from_slice(&ntp::Timestamp::from_unix(now).0.to_be_bytes());
            let _ = sock.send_to(&p, from).await;
        }
    });
    addr
}

fn node(servers: &[String]) -> (Store, Arc<Supervisor>) {
    let store = Store::default();
    let sup = Supervisor::new(store.clone(), Logs::new(None, 100, 0), None);
    sup.set_condition(basalt_supervisor::NETWORK, true);
    if !servers.is_empty() {
        store
            .apply(
                "test",
                "timeservers",
                TimeServerStatus {
                    servers: servers.to_vec(),
                },
            )
            .unwrap();
    }
    (store, sup)
}

fn config(time: &str) -> Option<Arc<Config>> {
    let text = format!(
        "{}\n---\napiVersion: v1alpha1\nkind: TimeConfig\n{time}",
        include_str!("../../config/testdata/valid/worker.yaml")
    );
    Some(Arc::new(
        Config::parse(&text, basalt_config::Mode::Metal).unwrap(),
    ))
}

/// Makes `config` the node's active config, as init's config lifecycle does.
fn set_config(store: &Store, config: Option<Arc<Config>>) {
    let config = config.expect("a config");
    store
        .apply(
            "config",
            basalt_config::resource::ACTIVE_ID,
            basalt_config::resource::ActiveConfig {
                generation: 1,
                config,
            },
        )
        .unwrap();
}

async fn until_status(store: &Store, what: &str, f: impl Fn(&TimeStatus) -> bool) -> TimeStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((_, s)) = store.get::<TimeStatus>(STATUS_ID)
            && f(&s)
        {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no TimeStatus {what}: {:?}",
            store.get::<TimeStatus>(STATUS_ID)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn offsets_past_a_second_step_and_the_shortest_round_trip_wins() {
    assert_eq!(adjust(2.5), Adjust::Step(2.5));
    assert_eq!(adjust(-1.5), Adjust::Step(-1.5));
    assert_eq!(adjust(0.3), Adjust::Slew(0.3));
    let s = |delay: f64, stratum: u8| ntp::Sample {
        offset: 0.0,
        delay,
        stratum,
    };
    assert_eq!(
        best(&[(0, s(0.2, 1)), (1, s(0.05, 3)), (2, s(0.05, 2))]).map(|b| b.0),
        Some(2)
    );
    assert_eq!(best(&[]), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_a_year_behind_is_stepped_then_slewed_and_the_condition_set() {
    let ahead = server(YEAR, false).await;
    let silent = server(0.0, true).await;
    let (store, sup) = node(&[silent.to_string(), ahead.to_string()]);
    let clock = Arc::new(FakeClock::default());
    tokio::spawn(run(store.clone(), sup.clone(), clock.clone(), false));
    assert!(
        sup.wait_condition(basalt_supervisor::TIME, Duration::from_secs(60))
            .await
    );
    let s = until_status(&store, "synced", |s| s.synced).await;
    assert!((clock.offset() - YEAR).abs() < 0.5, "{}", clock.offset());
    assert_eq!(s.server.as_deref(), Some(ahead.to_string().as_str()));
    assert!(
        s.adjustment
            .as_deref()
            .unwrap()
            .starts_with("stepped by +31536000."),
        "{s:?}"
    );
    // Each server has its line: the silent one's error, the other's offset and stratum.
    assert_eq!(s.servers.len(), 2);
    assert!(
        s.servers[0]
            .error
            .starts_with(&format!("no answer from {silent} within 3s")),
        "{s:?}"
    );
    assert_eq!(s.servers[1].stratum, Some(2));
    assert!((s.servers[1].offset_seconds.unwrap() - YEAR).abs() < 0.5);
    assert!(matches!(
        clock.adjustments.lock().unwrap()[0],
        Adjust::Step(_)
    ));

    // A new server list is asked at once; the clock is now close: a slew.
    let (_, again) = {
        let near = server(YEAR + 0.25, false).await;
        store
            .apply(
                "test",
                "timeservers",
                TimeServerStatus {
                    servers: vec![near.to_string()],
                },
            )
            .unwrap();
        (
            near,
            until_status(&store, "slewing", |s| {
                s.adjustment
                    .as_deref()
                    .is_some_and(|a| a.starts_with("slewing"))
            })
            .await,
        )
    };
    assert!(again.synced);
    assert!(
        (clock.offset() - YEAR - 0.25).abs() < 0.2,
        "{}",
        clock.offset()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_to_sync_with_releases_boot_at_once_and_a_silent_server_at_boot_timeout() {
    // No server at all: nothing waits once there is a config (which could have named one).
    let (store, sup) = node(&[]);
    tokio::spawn(run(
        store.clone(),
        sup.clone(),
        Arc::new(FakeClock::default()),
        false,
    ));
    let s = until_status(&store, "without servers", |s| !s.state.is_empty()).await;
    assert!(!s.synced && s.state.starts_with("no time servers"), "{s:?}");
    assert!(
        !sup.wait_condition(basalt_supervisor::TIME, Duration::ZERO)
            .await,
        "released in maintenance mode, before the config that may name servers"
    );
    set_config(&store, config(""));
    assert!(
        sup.wait_condition(basalt_supervisor::TIME, Duration::from_secs(30))
            .await
    );

    // The config's servers are asked as soon as it comes (before networkd's status says).
    let ahead = server(YEAR, false).await;
    let (store, sup) = node(&[]);
    let clock = Arc::new(FakeClock::default());
    tokio::spawn(run(store.clone(), sup.clone(), clock.clone(), false));
    until_status(&store, "without servers", |s| !s.state.is_empty()).await;
    set_config(&store, config(&format!("servers: [\"{ahead}\"]\n")));
    assert!(
        sup.wait_condition(basalt_supervisor::TIME, Duration::from_secs(30))
            .await
    );
    assert!(
        (clock.offset() - YEAR).abs() < 0.5,
        "synced first: {}",
        clock.offset()
    );

    // Disabled by the config, though a server is there.
    let (store, sup) = node(&[ahead.to_string()]);
    set_config(&store, config("disabled: true\n"));
    let clock = Arc::new(FakeClock::default());
    tokio::spawn(run(store.clone(), sup.clone(), clock.clone(), false));
    assert!(
        sup.wait_condition(basalt_supervisor::TIME, Duration::from_secs(30))
            .await
    );
    let s = until_status(&store, "disabled", |s| !s.state.is_empty()).await;
    assert_eq!(s.state, "disabled (TimeConfig.disabled)");
    assert_eq!(clock.offset(), 0.0, "the clock is left alone");

    // A server that never answers: boot waits bootTimeout, then goes on unsynced.
    let silent = server(0.0, true).await;
    let (store, sup) = node(&[silent.to_string()]);
    set_config(&store, config("bootTimeout: 15s\n"));
    tokio::spawn(run(
        store.clone(),
        sup.clone(),
        Arc::new(FakeClock::default()),
        false,
    ));
    let s = until_status(&store, "after one round", |s| !s.state.is_empty()).await;
    assert!(s.state.starts_with("no answer: "), "{s:?}");
    // The first round (3 s for the silent server) is well inside the 15 s.
    assert!(
        !sup.wait_condition(basalt_supervisor::TIME, Duration::ZERO)
            .await,
        "not released before bootTimeout"
    );
    assert!(
        sup.wait_condition(basalt_supervisor::TIME, Duration::from_secs(30))
            .await
    );
    assert!(!store.get::<TimeStatus>(STATUS_ID).unwrap().1.synced);

    // A container node: the host's clock.
    let (store, sup) = node(&[ahead.to_string()]);
    run(
        store.clone(),
        sup.clone(),
        Arc::new(FakeClock::default()),
        true,
    )
    .await;
    assert!(
        sup.wait_condition(basalt_supervisor::TIME, Duration::from_secs(1))
            .await
    );
}

/// Debian's chronyd as the server (on a loopback port; `-x`: it never touches the host's
/// clock): the packets of a real implementation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chronyd_answers_and_its_offset_is_measured() {
    if !basalt_testkit::tier(
        basalt_testkit::Tier::Privileged,
        "chronyd_answers_and_its_offset_is_measured",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = basalt_testkit::free_udp_port();
    let conf = dir.path().join("chrony.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbindaddress 127.0.0.1\ncmdport 0\nlocal stratum 8\nallow 127.0.0.1\npidfile {}\n",
            dir.path().join("chronyd.pid").display()
        ),
    )
    .unwrap();
    let mut chronyd = std::process::Command::new("chronyd")
        .args(["-x", "-d", "-f"])
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("chronyd.log")).unwrap())
        .spawn()
        .expect("chronyd (apt-get install chrony)");
    let clock = FakeClock::default();
    *clock.offset.lock().unwrap() = -YEAR;
    let server = format!("127.0.0.1:{port}");
    let mut last;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let sample = loop {
        match query(&server, &clock, Duration::from_secs(3)).await {
            Ok((_, s)) => break s,
            Err(e) => last = basalt_sys::error_chain(&e),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "chronyd never answered: {last}; {}",
            std::fs::read_to_string(dir.path().join("chronyd.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let _ = chronyd.kill();
    let _ = chronyd.wait();
    assert!((sample.offset - YEAR).abs() < 0.5, "{sample:?}");
    assert_eq!(sample.stratum, 8, "chronyd's local stratum: {sample:?}");
    assert!(sample.delay < 1.0, "{sample:?}");
}
