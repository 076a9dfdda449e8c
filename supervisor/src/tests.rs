//! The supervisor with real processes (the restart policy's arithmetic is tested in `policy`).
//! Programs come from the host (`/bin/sh`, `sleep`): these tests run on the build machine,
//! never on a node.

use std::time::Duration;

use super::*;

fn sh(script: &str) -> ProcessSpec {
    ProcessSpec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        ..ProcessSpec::default()
    }
}

fn quick(mut def: ServiceDef) -> ServiceDef {
    def.backoff = Some(Backoff::new(
        Duration::from_millis(50),
        Duration::from_millis(400),
        2,
    ));
    def.stop_timeout = Duration::from_millis(500);
    def
}

fn sup() -> Arc<Supervisor> {
    Supervisor::new(Store::default(), Logs::new(None, 100, 0), None)
}

const T: Duration = Duration::from_secs(10);

async fn wait_log(sup: &Supervisor, id: &str, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + T;
    loop {
        let lines: Vec<String> = sup
            .logs()
            .get(id)
            .map(|r| r.tail(0).into_iter().map(|e| e.line).collect())
            .unwrap_or_default();
        if lines.iter().any(|l| l.contains(needle)) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: no line with {needle:?} in {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn status(sup: &Supervisor, id: &str) -> ServiceStatus {
    sup.store.get::<ServiceStatus>(id).unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_a_service_with_its_own_environment_and_captures_its_output() {
    let sup = sup();
    let dir = tempfile::tempdir().unwrap();
    let mut p = sh("echo out $GREETING; echo err >&2; pwd; ulimit -n; exec sleep 30");
    p.env.push(("GREETING".into(), "hello".into()));
    p.cwd = Some(dir.path().to_path_buf());
    p.rlimits = vec![(nix::sys::resource::Resource::RLIMIT_NOFILE, 77, 77)];
    sup.add(quick(ServiceDef::new("echo", p))).await;
    let lines = wait_log(&sup, "echo", "77").await;
    assert!(lines.contains(&"out hello".to_string()), "{lines:?}");
    assert!(lines.contains(&"err".to_string()), "{lines:?}");
    assert!(
        lines.contains(&dir.path().display().to_string()),
        "{lines:?}"
    );
    assert!(sup.wait_for("echo", T, |s, _| s == State::Running).await);
    let st = status(&sup, "echo");
    assert!(st.pid > 0);
    assert_eq!(st.health, HealthState::None);
    // Nothing leaks from init's environment.
    sup.stop("echo").await.unwrap();
    assert_eq!(status(&sup, "echo").state, State::Stopped);
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(st.pid), None).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_service_comes_back_within_the_backoff() {
    let sup = sup();
    sup.add(quick(ServiceDef::new("victim", sh("exec sleep 30"))))
        .await;
    assert!(sup.wait_for("victim", T, |s, _| s == State::Running).await);
    let first = status(&sup, "victim").pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + T;
    loop {
        let st = status(&sup, "victim");
        if st.state == State::Running && st.pid != first {
            assert_eq!(st.restarts, 1);
            let states: Vec<State> = st.events.iter().map(|e| e.state).collect();
            assert!(states.contains(&State::BackingOff), "{states:?}");
            let msg = &st
                .events
                .iter()
                .find(|e| e.state == State::BackingOff)
                .unwrap()
                .message;
            assert!(
                msg.starts_with("killed by SIGKILL; restarting in 50 ms"),
                "{msg}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "not restarted: {st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sup.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_escalates_to_sigkill_and_takes_the_whole_group() {
    let sup = sup();
    // The shell ignores SIGTERM and has a child in its group that would outlive it.
    sup.add(quick(ServiceDef::new(
        "stubborn",
        sh("trap '' TERM; sleep 60 & echo child $!; while :; do sleep 0.05; done"),
    )))
    .await;
    let lines = wait_log(&sup, "stubborn", "child ").await;
    let child: i32 = lines
        .iter()
        .find_map(|l| l.strip_prefix("child "))
        .unwrap()
        .parse()
        .unwrap();
    let t = Instant::now();
    sup.stop("stubborn").await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "SIGTERM was not ignored?"
    );
    let last = sup.logs().get("stubborn").unwrap().tail(1).remove(0).line;
    assert_eq!(last, "stopped (killed by SIGKILL)");
    // The grandchild got SIGKILL too (it may linger as a zombie of the test process's reaper,
    // so look at its state rather than its existence).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z "), "{stat}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_and_on_failure_services_end_as_they_should() {
    let sup = sup();
    let mut ok = ServiceDef::new("ok", sh("exit 0"));
    ok.restart = Restart::Once;
    let mut bad = ServiceDef::new("bad", sh("exit 3"));
    bad.restart = Restart::Once;
    let mut flaky = ServiceDef::new("flaky", sh("exit 0"));
    flaky.restart = Restart::OnFailure;
    sup.add(quick(ok)).await;
    sup.add(quick(bad)).await;
    sup.add(quick(flaky)).await;
    assert!(sup.wait_for("ok", T, |s, _| s == State::Finished).await);
    assert!(sup.wait_for("bad", T, |s, _| s == State::Failed).await);
    assert!(sup.wait_for("flaky", T, |s, _| s == State::Finished).await);
    assert_eq!(status(&sup, "bad").message, "exit code 3");
    // A failed service starts again by hand.
    sup.start("bad").await.unwrap();
    assert!(
        sup.wait_for("bad", T, |_, _| status(&sup, "bad").restarts == 0
            && status(&sup, "bad")
                .events
                .iter()
                .filter(|e| e.state == State::Failed)
                .count()
                == 2)
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_waits_for_its_dependencies_to_be_healthy() {
    let sup = sup();
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("ready");
    let f2 = flag.clone();
    let mut db = ServiceDef::new("db", sh("exec sleep 30"));
    db.health = Some(Health {
        check: Arc::new(move || {
            let f = f2.clone();
            Box::pin(async move {
                if f.exists() {
                    Ok(())
                } else {
                    Err("not ready".into())
                }
            })
        }),
        interval: Duration::from_millis(50),
        timeout: Duration::from_secs(1),
    });
    let mut app = ServiceDef::new("app", sh("exec sleep 30"));
    app.depends = vec![
        Dependency::Service("db".into()),
        Dependency::Condition(NETWORK),
    ];
    sup.add(quick(app)).await;
    sup.add(quick(db)).await;
    assert!(sup.wait_for("db", T, |s, _| s == State::Running).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Failing checks before the first good one: still starting up.
    assert_eq!(sup.state("db").unwrap().1, HealthState::Unknown);
    let st = status(&sup, "app");
    assert_eq!(st.state, State::Waiting);
    assert_eq!(st.message, "waiting for service db, network-ready");
    std::fs::write(&flag, "").unwrap();
    assert!(
        sup.wait_for("db", T, |_, h| h == HealthState::Healthy)
            .await
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(status(&sup, "app").message, "waiting for network-ready");
    sup.set_condition(NETWORK, true);
    assert!(sup.wait_for("app", T, |s, _| s == State::Running).await);
    // After a good check, a failing one is unhealthy; a running dependent stays up.
    std::fs::remove_file(&flag).unwrap();
    assert!(
        sup.wait_for("db", T, |_, h| h == HealthState::Unhealthy)
            .await
    );
    assert_eq!(status(&sup, "app").state, State::Running);
    assert_eq!(sup.stop_order(), ["app", "db"]);
    sup.stop_all().await;
    assert_eq!(status(&sup, "app").state, State::Stopped);
    assert_eq!(status(&sup, "db").state, State::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_service_is_checked_often_until_healthy_then_at_its_interval() {
    let sup = sup();
    let checks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let c2 = checks.clone();
    let mut db = ServiceDef::new("db", sh("exec sleep 30"));
    db.health = Some(Health {
        check: Arc::new(move || {
            c2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Ready 1.2 s after the test began: the third or fourth startup check.
            let ready = started.elapsed() > Duration::from_millis(1200);
            Box::pin(async move { if ready { Ok(()) } else { Err("not yet".into()) } })
        }),
        interval: Duration::from_secs(60),
        timeout: Duration::from_secs(1),
    });
    sup.add(quick(db)).await;
    // With only the 60 s interval it would be healthy after a minute.
    assert!(
        sup.wait_for("db", Duration::from_secs(4), |_, h| h
            == HealthState::Healthy)
            .await,
        "not healthy within 4 s: {:?}",
        sup.state("db")
    );
    let at_healthy = checks.load(std::sync::atomic::Ordering::SeqCst);
    assert!((3..=6).contains(&at_healthy), "{at_healthy} checks");
    // Healthy: back to the service's own interval, no more checks for a while.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(checks.load(std::sync::atomic::Ordering::SeqCst), at_healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_program_backs_off_and_says_why() {
    let sup = sup();
    let p = ProcessSpec {
        program: "/nonexistent/prog".into(),
        ..ProcessSpec::default()
    };
    sup.add(quick(ServiceDef::new("ghost", p))).await;
    assert!(
        sup.wait_for("ghost", T, |s, _| s == State::BackingOff)
            .await
    );
    let st = status(&sup, "ghost");
    assert!(
        st.message
            .starts_with("cannot start /nonexistent/prog: No such file or directory"),
        "{}",
        st.message
    );
    sup.stop("ghost").await.unwrap();
    assert_eq!(status(&sup, "ghost").state, State::Stopped);
}

#[test]
fn stop_order_puts_dependents_first() {
    let deps: BTreeMap<String, Vec<String>> = [
        ("apid", vec!["containerd"]),
        ("containerd", vec![]),
        ("kubelet", vec!["containerd", "apid"]),
        ("etcd", vec!["containerd"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    let order = stop_order(&deps);
    let pos = |s: &str| order.iter().position(|x| x == s).unwrap();
    assert!(pos("kubelet") < pos("apid"));
    assert!(pos("apid") < pos("containerd"));
    assert!(pos("etcd") < pos("containerd"));
    assert_eq!(order.len(), 4);
}

#[test]
fn confinement_in_a_cgroup_with_a_reduced_capability_set() {
    if !basalt_testkit::tier(
        basalt_testkit::Tier::Privileged,
        "supervisor cgroup and caps",
    ) {
        return;
    }
    let Some(root) = crate::cgroup::test_root() else {
        panic!("the privileged tier needs a writable cgroup v2 hierarchy");
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let sup = Supervisor::new(
            Store::default(),
            Logs::new(None, 100, 0),
            Some(root.clone()),
        );
        let mut p = sh("grep CapBnd /proc/self/status; cat /proc/self/cgroup; exec sleep 30");
        // CAP_NET_ADMIN (12) and CAP_SYS_ADMIN (21) only.
        p.keep_caps = Some(vec![12, 21]);
        sup.add(quick(ServiceDef::new("confined", p))).await;
        let lines = wait_log(&sup, "confined", "CapBnd").await;
        assert!(
            lines.iter().any(|l| l == "CapBnd:\t0000000000201000"),
            "{lines:?}"
        );
        let lines = wait_log(&sup, "confined", "confined").await;
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("0::") && l.ends_with("/confined")),
            "{lines:?}"
        );
        assert!(
            sup.wait_for("confined", T, |s, _| s == State::Running)
                .await
        );
        // The service's process is the group's only one once the shell has exec'd `sleep`
        // (until then `cat`, its child, may still be there: on a loaded machine it was).
        let pid = status(&sup, "confined").pid.to_string();
        let procs_file = root.join("confined/cgroup.procs");
        let deadline = std::time::Instant::now() + T;
        let mut procs = std::fs::read_to_string(&procs_file).unwrap();
        while procs.trim() != pid && std::time::Instant::now() < deadline {
            assert!(
                procs.lines().any(|l| l == pid),
                "the service's process {pid} is not in its group: {procs:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            procs = std::fs::read_to_string(&procs_file).unwrap();
        }
        assert_eq!(procs.trim(), pid);
        sup.stop_all().await;
    });
    let _ = std::fs::remove_dir(root.join("confined"));
    let _ = std::fs::remove_dir(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_gets_its_cpu_weight_where_the_group_has_the_cpu_controller() {
    // A directory standing in for the cgroup hierarchy (the host's cgroup v2 has no `cpu`
    // controller here; the nodes' has): the weight is written where the group has the file,
    // and nothing is made where it has not.
    let root = tempfile::tempdir().unwrap();
    let weighted = root.path().join("weighted");
    for id in ["weighted", "plain"] {
        std::fs::create_dir(root.path().join(id)).unwrap();
        std::fs::write(root.path().join(id).join("cgroup.procs"), "").unwrap();
    }
    std::fs::write(weighted.join("cpu.weight"), "100\n").unwrap();
    let sup = Supervisor::new(
        Store::default(),
        Logs::new(None, 100, 0),
        Some(root.path().to_path_buf()),
    );
    for id in ["weighted", "plain"] {
        let mut p = sh("exec sleep 30");
        p.cpu_weight = Some(400);
        sup.add(quick(ServiceDef::new(id, p))).await;
        assert!(sup.wait_for(id, T, |s, _| s == State::Running).await);
    }
    assert_eq!(
        std::fs::read_to_string(weighted.join("cpu.weight")).unwrap(),
        "400"
    );
    assert!(!root.path().join("plain/cpu.weight").exists());
    sup.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_waiting_together_stay_quiet() {
    // Two services waiting on the same condition, and a health-checked one whose checks keep
    // failing: nothing they report changes, so nothing is published — waiting services once
    // woke each other without end (each re-report a change to the other), a busy PID 1.
    let sup = sup();
    let mut checked = ServiceDef::new("checked", sh("exec sleep 30"));
    checked.health = Some(Health {
        check: Arc::new(|| Box::pin(async { Err("not yet".into()) })),
        interval: Duration::from_millis(50),
        timeout: Duration::from_secs(1),
    });
    sup.add(quick(checked)).await;
    for id in ["a", "b"] {
        let mut def = ServiceDef::new(id, sh("exec sleep 30"));
        def.depends = vec![Dependency::Condition("never")];
        sup.add(quick(def)).await;
    }
    for id in ["a", "b"] {
        assert!(sup.wait_for(id, T, |s, _| s == State::Waiting).await);
    }
    assert!(sup.wait_for("checked", T, |s, _| s == State::Running).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = sup.store.revision();
    let mut states = sup.states.subscribe();
    states.borrow_and_update();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        sup.store.revision(),
        before,
        "the store was written while nothing changed"
    );
    assert!(
        !states.has_changed().unwrap(),
        "waiters were woken while nothing changed"
    );
    assert_eq!(status(&sup, "a").message, "waiting for never");
    sup.stop_all().await;
}
