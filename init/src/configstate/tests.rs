use super::*;

const CP: &str = include_str!("../../../config/testdata/valid/controlplane.yaml");

fn state() -> (tempfile::TempDir, ConfigState) {
    let dir = tempfile::tempdir().unwrap();
    let s = ConfigState::new(dir.path().join("state"), Mode::Metal, Store::default());
    (dir, s)
}

fn with_label(text: &str, k: &str, v: &str) -> String {
    text.replacen(
        "type: controlplane\n",
        &format!("type: controlplane\nnodeLabels:\n  {k}: {v}\n"),
        1,
    )
}

#[tokio::test]
async fn maintenance_then_apply_persists_and_publishes() {
    let (_d, s) = state();
    assert!(s.load_at_boot().is_empty());
    assert!(s.active().is_none());
    let out = s.apply(CP, ApplyMode::NoReboot, false).unwrap();
    assert_eq!(out.summary, "applied live and saved");
    assert!(
        out.resource_changes
            .contains(&"+ MachineConfig MachineConfig".to_string())
    );
    assert!(
        out.config_diff.contains("+kind: ClusterConfig"),
        "{}",
        out.config_diff
    );
    assert!(
        !out.config_diff.contains("PRIVATE KEY"),
        "secrets never shown"
    );
    assert!(s.active().is_some() && s.persisted());
    assert!(s.store.get::<ConfigDocument>("ClusterConfig").is_some());
    let saved = std::fs::read_to_string(s.dir.join("config.yaml")).unwrap();
    assert_eq!(
        Config::parse(&saved, Mode::Metal).unwrap(),
        *s.active().unwrap()
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(s.dir.join("config.yaml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A reboot: a fresh state over the same directory comes back with the same config.
    let again = ConfigState::new(s.dir.clone(), Mode::Metal, Store::default());
    assert_eq!(
        again.load_at_boot(),
        [format!(
            "config loaded from {}",
            s.dir.join("config.yaml").display()
        )]
    );
    assert_eq!(again.active(), s.active());
}

#[tokio::test]
async fn an_invalid_config_changes_nothing_and_reports_every_problem() {
    let (_d, s) = state();
    s.apply(CP, ApplyMode::NoReboot, false).unwrap();
    let before = std::fs::read(s.dir.join("config.yaml")).unwrap();
    let bad = CP
        .replace("type: controlplane", "type: boss")
        .replace("dnsDomain: cluster.local", "dnsDomain: -bad-");
    let err = s.apply(&bad, ApplyMode::NoReboot, false).unwrap_err();
    let text = basalt_sys::error_chain(&err);
    assert!(
        text.starts_with("the config was rejected and nothing changed: config has 2 problems"),
        "{text}"
    );
    assert!(
        text.contains("type") && text.contains("dnsDomain"),
        "{text}"
    );
    assert_eq!(std::fs::read(s.dir.join("config.yaml")).unwrap(), before);
    assert_eq!(
        *s.active().unwrap(),
        Config::parse(CP, Mode::Metal).unwrap()
    );
}

#[tokio::test]
async fn dry_run_shows_the_diff_and_changes_nothing() {
    let (_d, s) = state();
    s.apply(CP, ApplyMode::NoReboot, false).unwrap();
    let rev = s.store.revision();
    let out = s
        .apply(&with_label(CP, "zone", "a"), ApplyMode::NoReboot, true)
        .unwrap();
    assert!(
        out.summary.starts_with("dry run: 1 resource change;"),
        "{}",
        out.summary
    );
    assert_eq!(out.resource_changes, ["~ MachineConfig MachineConfig"]);
    assert!(
        out.config_diff.contains("+nodeLabels:"),
        "{}",
        out.config_diff
    );
    assert!(
        out.config_diff.contains("+  zone: a"),
        "{}",
        out.config_diff
    );
    assert_eq!(s.store.revision(), rev);
    assert!(s.active().unwrap().machine().node_labels.is_empty());
}

#[tokio::test]
async fn a_change_that_needs_a_reboot_says_which_fields() {
    let (_d, s) = state();
    s.apply(CP, ApplyMode::NoReboot, false).unwrap();
    let changed = CP.replace("dnsDomain: cluster.local", "dnsDomain: other.local");
    let err = s.apply(&changed, ApplyMode::NoReboot, false).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("ClusterConfig.network: pod and service subnets are fixed at boot"),
        "{msg}"
    );
    assert!(
        msg.ends_with("apply with --mode staged or --mode reboot"),
        "{msg}"
    );
    // Staged is fine, and is promoted at the next boot.
    let out = s.apply(&changed, ApplyMode::Staged, false).unwrap();
    assert_eq!(out.summary, "config staged: it applies at the next boot");
    assert_eq!(
        s.active()
            .unwrap()
            .cluster()
            .network
            .as_ref()
            .unwrap()
            .dns_domain
            .to_string(),
        "cluster.local"
    );
    let next = ConfigState::new(s.dir.clone(), Mode::Metal, Store::default());
    let notes = next.load_at_boot();
    assert_eq!(notes[0], "staged config promoted");
    assert_eq!(
        next.active()
            .unwrap()
            .cluster()
            .network
            .as_ref()
            .unwrap()
            .dns_domain
            .to_string(),
        "other.local"
    );
}

#[tokio::test(start_paused = true)]
async fn a_tried_config_reverts_unless_confirmed() {
    let (_d, s) = state();
    s.apply(CP, ApplyMode::NoReboot, false).unwrap();
    let tried = with_label(CP, "zone", "b");
    let out = s
        .apply(&tried, ApplyMode::Try(Duration::from_secs(30)), false)
        .unwrap();
    assert!(
        out.summary.starts_with("applied live for 30.0 s;"),
        "{}",
        out.summary
    );
    assert_eq!(s.active().unwrap().machine().node_labels["zone"], "b");
    assert!(!s.persisted());
    // Not saved: the file still holds the first config.
    let saved = std::fs::read_to_string(s.dir.join("config.yaml")).unwrap();
    assert!(!saved.contains("zone"));
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(
        s.active().unwrap().machine().node_labels.is_empty(),
        "reverted"
    );
    assert!(s.persisted());

    // Confirmed in time: it stays, and is saved.
    s.apply(&tried, ApplyMode::Try(Duration::from_secs(30)), false)
        .unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let out = s.apply(&tried, ApplyMode::NoReboot, false).unwrap();
    assert_eq!(
        out.summary,
        "applied live and saved; the tried config is confirmed"
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(s.active().unwrap().machine().node_labels["zone"], "b");
}

#[tokio::test(start_paused = true)]
async fn a_try_from_maintenance_reverts_to_maintenance() {
    let (_d, s) = state();
    s.apply(CP, ApplyMode::Try(Duration::from_secs(5)), false)
        .unwrap();
    // What the controllers reconcile to is the tried config, then none again.
    let (_, tried) = s
        .store
        .get::<ActiveConfig>(ACTIVE_ID)
        .expect("the tried config");
    assert_eq!(Some(&tried.config), s.active().as_ref());
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(s.active().is_none());
    assert!(s.store.get::<ActiveConfig>(ACTIVE_ID).is_none());
    assert!(s.store.get::<ConfigDocument>("MachineConfig").is_none());
}

#[tokio::test]
async fn a_persisted_config_that_no_longer_validates_is_moved_aside() {
    let (_d, s) = state();
    std::fs::create_dir_all(&s.dir).unwrap();
    std::fs::write(s.dir.join("config.yaml"), "kind: Nope\n").unwrap();
    let notes = s.load_at_boot();
    assert!(
        notes[0].contains("no longer validates, moved aside"),
        "{notes:?}"
    );
    assert!(s.active().is_none());
    assert!(s.dir.join("config.rejected").exists());
}

#[test]
fn what_kubernetes_reads_once_needs_a_reboot_and_the_rest_does_not() {
    let old = Config::parse(CP, Mode::Metal).unwrap();
    // The kubelet's arguments and the node's labels follow live.
    let live = with_label(CP, "zone", "b").replacen(
        "type: controlplane\n",
        "type: controlplane\nkubelet:\n  extraArgs:\n    max-pods: \"50\"\n",
        1,
    );
    let new = Config::parse(&live, Mode::Metal).unwrap();
    assert_eq!(needs_reboot(&old, &new), Vec::<String>::new());
    // The endpoint the PKI and kubeconfigs were issued for does not.
    let moved = CP.replacen("https://", "https://moved.", 1);
    assert_ne!(moved, CP, "the test config names an endpoint");
    let new = Config::parse(&moved, Mode::Metal).unwrap();
    let r = needs_reboot(&old, &new);
    assert!(
        r.len() == 1 && r[0].starts_with("ClusterConfig.controlPlane.endpoint"),
        "{r:?}"
    );
}
