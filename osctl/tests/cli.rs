//! osctl as a user runs it: gen config, validate, patches, and the errors they print.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn osctl(dir: &Path, args: &[&str]) -> Output {
    basalt_testkit::hermetic(&mut Command::new(env!("CARGO_BIN_EXE_osctl")))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn gen_config_then_validate() {
    let dir = tempfile::tempdir().unwrap();
    let o = osctl(
        dir.path(),
        &["gen", "config", "demo", "https://10.5.0.2:6443"],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    for f in ["controlplane.yaml", "worker.yaml", "osconfig"] {
        let md = std::fs::metadata(dir.path().join(f)).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(md.permissions().mode() & 0o777, 0o600, "{f} holds secrets");
    }
    for f in ["controlplane.yaml", "worker.yaml"] {
        let o = osctl(dir.path(), &["validate", "-c", f]);
        assert!(o.status.success(), "{f}: {:?}", text(&o));
        assert_eq!(text(&o).0, format!("{f} is valid for metal mode\n"));
    }
    // A second run does not clobber the first.
    let o = osctl(
        dir.path(),
        &["gen", "config", "demo", "https://10.5.0.2:6443"],
    );
    assert!(!o.status.success());
    assert!(
        text(&o)
            .1
            .contains("controlplane.yaml already exists (use --force to overwrite)")
    );
}

#[test]
fn validate_prints_every_mistake_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let o = osctl(
        dir.path(),
        &["gen", "config", "demo", "https://10.5.0.2:6443"],
    );
    assert!(o.status.success());
    // Five mistakes in three documents of a generated config.
    let cp = std::fs::read_to_string(dir.path().join("controlplane.yaml")).unwrap();
    let broken = cp
        .replacen("type: controlplane", "type: controlplain", 1)
        .replacen(
            "  endpoint: \"https://10.5.0.2:6443\"",
            "  endpoint: \"https://10.5.0.2:6443\"\n  endpiont: x",
            1,
        )
        .replacen(
            "allowSchedulingOnControlPlanes: false",
            "allowSchedulingOnControlPlanes: no",
            1,
        )
        + "---\napiVersion: v1alpha1\nkind: LinkConfig\nname: eth0\nmtu: \"1500\"\naddresses: [10.0.0.300/24]\n";
    std::fs::write(dir.path().join("broken.yaml"), &broken).unwrap();
    let o = osctl(dir.path(), &["validate", "-c", "broken.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    let (_, err) = text(&o);
    let line_of = |needle: &str| broken.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let want = [
        format!(
            "document 1 (MachineConfig): .type: \"controlplain\" is not one of controlplane, worker (line {})",
            line_of("controlplain")
        ),
        format!(
            "document 2 (ClusterConfig): .controlPlane: unknown field \"endpiont\" (did you mean \"endpoint\"?) (line {})",
            line_of("endpiont")
        ),
        format!(
            "document 2 (ClusterConfig): .allowSchedulingOnControlPlanes: expected true or false, found string \"no\" (YAML 1.2 reads it as a string) (line {})",
            line_of("allowScheduling")
        ),
        format!(
            "document 4 (LinkConfig eth0): .mtu: expected an integer, found string \"1500\" (line {})",
            line_of("mtu:")
        ),
        format!(
            "document 4 (LinkConfig eth0): .addresses[0]: \"10.0.0.300/24\" is not an IPv4 or IPv6 prefix (line {})",
            line_of("10.0.0.300")
        ),
    ];
    assert!(
        err.starts_with("error: broken.yaml: config has 5 problems:\n"),
        "{err}"
    );
    for w in &want {
        assert!(err.contains(w), "missing {w:?} in\n{err}");
    }
}

#[test]
fn secrets_bundle_and_patches() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        osctl(dir.path(), &["gen", "secrets", "-o", "s.yaml"])
            .status
            .success()
    );
    std::fs::write(
        dir.path().join("patch.yaml"),
        "apiVersion: v1alpha1\nkind: LinkConfig\nname: eth0\naddresses: [10.5.0.3/24]\n",
    )
    .unwrap();
    let o = osctl(
        dir.path(),
        &[
            "gen",
            "config",
            "demo",
            "https://10.5.0.2:6443",
            "--with-secrets",
            "s.yaml",
            "-o",
            "a",
            "--config-patch",
            "@patch.yaml",
            "--config-patch-worker",
            "[{op: add, path: /MachineConfig/nodeLabels, value: {role: w}}]",
            "--with-kubespan",
        ],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let o = osctl(
        dir.path(),
        &[
            "gen",
            "config",
            "demo",
            "https://10.5.0.2:6443",
            "--with-secrets",
            "s.yaml",
            "-o",
            "b",
        ],
    );
    assert!(o.status.success());
    let id = |f: &str| {
        std::fs::read_to_string(dir.path().join(f))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("id: "))
            .unwrap()
            .to_string()
    };
    assert_eq!(
        id("a/controlplane.yaml"),
        id("b/controlplane.yaml"),
        "same secrets, same cluster"
    );
    let worker = std::fs::read_to_string(dir.path().join("a/worker.yaml")).unwrap();
    assert!(
        worker.contains("kind: LinkConfig")
            && worker.contains("role: w")
            && worker.contains("kind: KubeSpanConfig")
    );
    let cp = std::fs::read_to_string(dir.path().join("a/controlplane.yaml")).unwrap();
    assert!(
        !cp.contains("role: w"),
        "worker-only patch stays off the control plane"
    );

    // A patch that breaks the config is refused with the reason, and nothing is written.
    let o = osctl(
        dir.path(),
        &[
            "gen",
            "config",
            "demo",
            "https://10.5.0.2:6443",
            "-o",
            "c",
            "--config-patch",
            "[{op: add, path: /LinkConfig=eth0, value: {mtu: 9}}]",
        ],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains(".mtu: 9 is outside 68..=65535"),
        "{:?}",
        text(&o)
    );
    assert!(!dir.path().join("c/controlplane.yaml").exists());
}

#[test]
fn container_mode_and_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        osctl(
            dir.path(),
            &[
                "gen",
                "config",
                "demo",
                "https://10.5.0.2:6443",
                "--install-disk",
                "/dev/vda"
            ]
        )
        .status
        .success()
    );
    let o = osctl(
        dir.path(),
        &["validate", "-c", "worker.yaml", "--mode", "container"],
    );
    assert!(!o.status.success());
    assert!(
        text(&o)
            .1
            .contains("a container node does not install to disk")
    );
    let o = osctl(dir.path(), &["gen", "config", "demo", "10.5.0.2:6443"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("is not a URL"), "{:?}", text(&o));
    let o = osctl(dir.path(), &["validate", "-c", "missing.yaml"]);
    assert!(text(&o).1.contains("cannot read missing.yaml"));
    let o = osctl(dir.path(), &["gen", "schema"]);
    assert!(text(&o).0.contains("\"LinkConfigDocument\""));
}

#[test]
fn the_command_reference_is_current_and_every_command_has_an_example() {
    let dir = tempfile::tempdir().unwrap();
    let o = osctl(dir.path(), &["docs"]);
    assert!(o.status.success());
    let generated = text(&o).0;
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/osctl.md");
    let on_disk = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        generated == on_disk,
        "docs/osctl.md is stale: run `cargo run -p osctl -- docs > docs/osctl.md`"
    );
    // Every leaf command section ends with an example block.
    let sections: Vec<&str> = generated.split("\n## ").skip(2).collect();
    for s in generated.split("\n### ").skip(1).chain(sections) {
        let title = s.lines().next().unwrap_or_default();
        if s.contains("```\nExample") || !s.contains("```\nosctl") {
            continue;
        }
        panic!("{title}: no example in its help");
    }
}

#[test]
fn client_config_contexts_endpoints_nodes_and_merge() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("client.yaml");
    let cfg_s = cfg.to_str().unwrap();
    // Nothing there yet: the error says how to make one.
    let o = osctl(dir.path(), &["--osconfig", cfg_s, "services"]);
    assert!(!o.status.success());
    let err = text(&o).1;
    assert!(
        err.contains("no client config at") && err.contains("osctl gen config"),
        "{err}"
    );
    let o = osctl(
        dir.path(),
        &["gen", "config", "demo", "https://10.5.0.2:6443"],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let o = osctl(
        dir.path(),
        &["--osconfig", cfg_s, "config", "merge", "osconfig"],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("merged context \"demo\""));
    // Merging again keeps both, renamed.
    let o = osctl(
        dir.path(),
        &["--osconfig", cfg_s, "config", "merge", "osconfig"],
    );
    assert!(text(&o).0.contains("\"demo-1\""), "{:?}", text(&o));
    let o = osctl(
        dir.path(),
        &["--osconfig", cfg_s, "config", "context", "demo"],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let o = osctl(
        dir.path(),
        &[
            "--osconfig",
            cfg_s,
            "config",
            "endpoint",
            "10.5.0.2",
            "10.5.0.3",
        ],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let o = osctl(
        dir.path(),
        &["--osconfig", cfg_s, "config", "node", "10.5.0.4"],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let o = osctl(dir.path(), &["--osconfig", cfg_s, "config", "contexts"]);
    let out = text(&o).0;
    assert!(
        out.lines().any(|l| l.starts_with('*')
            && l.contains("demo ")
            && l.contains("10.5.0.2,10.5.0.3")
            && l.contains("10.5.0.4")),
        "{out}"
    );
    let o = osctl(dir.path(), &["--osconfig", cfg_s, "config", "info"]);
    let out = text(&o).0;
    assert!(out.contains("Roles:           os:admin"), "{out}");
    // OSCONFIG works as --osconfig does.
    let o = basalt_testkit::hermetic(&mut Command::new(env!("CARGO_BIN_EXE_osctl")))
        .args(["config", "info"])
        .env("OSCONFIG", &cfg)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        text(&o).0.contains("Current context: demo"),
        "{:?}",
        text(&o)
    );
    let o = osctl(
        dir.path(),
        &["--osconfig", cfg_s, "config", "context", "nope"],
    );
    assert!(text(&o).1.contains("no context \"nope\""), "{:?}", text(&o));

    // A reader's client config from the cluster's secrets.
    let o = osctl(
        dir.path(),
        &[
            "-e",
            "10.5.0.2",
            "gen",
            "osconfig",
            "--secrets",
            "controlplane.yaml",
            "--role",
            "os:reader",
            "-o",
            "reader",
        ],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let o = osctl(dir.path(), &["--osconfig", "reader", "config", "info"]);
    let out = text(&o).0;
    assert!(
        out.contains("Roles:           os:reader") && out.contains("Endpoints:       10.5.0.2"),
        "{out}"
    );
    // A worker config carries the OS CA key too; a file with no Secrets is refused by name.
    let o = osctl(
        dir.path(),
        &["gen", "osconfig", "--secrets", "osconfig", "-o", "x"],
    );
    assert!(!o.status.success());
    assert!(text(&o).1.contains("osconfig"), "{:?}", text(&o));
}

#[test]
fn unreachable_nodes_are_named_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let o = osctl(
        dir.path(),
        &["gen", "config", "demo", "https://10.5.0.2:6443"],
    );
    assert!(o.status.success());
    // Port 1 on loopback: nothing listens.
    let o = osctl(
        dir.path(),
        &[
            "--osconfig",
            "osconfig",
            "-e",
            "127.0.0.1:1",
            "-n",
            "127.0.0.1:1,localhost:1",
            "version",
        ],
    );
    assert!(!o.status.success());
    let err = text(&o).1;
    assert!(
        err.contains("127.0.0.1:1: error:") && err.contains("localhost:1: error:"),
        "{err}"
    );
    assert!(err.contains("nothing answers there"), "{err}");
    assert!(err.contains("2 of 2 nodes failed"), "{err}");
}

#[test]
fn a_context_whose_namespace_is_gone_is_named_and_insecure_calls_go_around_it() {
    let dir = tempfile::tempdir().unwrap();
    let o = osctl(
        dir.path(),
        &["gen", "config", "demo", "https://10.5.0.2:6443"],
    );
    assert!(o.status.success());
    // What a destroyed local cluster's context looked like: it dials from its namespace.
    let oc = std::fs::read_to_string(dir.path().join("osconfig")).unwrap();
    let gone = format!("basalt-gone-{}", std::process::id());
    let stale = oc.replacen(
        "    endpoints:\n",
        &format!("    netns: {gone}\n    endpoints:\n"),
        1,
    );
    assert_ne!(stale, oc);
    std::fs::write(dir.path().join("stale"), stale).unwrap();
    let o = osctl(dir.path(), &["--osconfig", "stale", "version"]);
    assert!(!o.status.success());
    let err = text(&o).1;
    assert!(
        err.contains(&format!(
            "network namespace \"{gone}\", which does not exist"
        )) && err.contains("osctl config context"),
        "{err}"
    );
    // In maintenance mode a node is dialed by its address: the stale namespace is not tried
    // (nothing listens on port 1, which is the error to expect, not the namespace).
    let o = osctl(
        dir.path(),
        &[
            "--osconfig",
            "stale",
            "--insecure",
            "-n",
            "127.0.0.1:1",
            "version",
        ],
    );
    assert!(!o.status.success());
    let err = text(&o).1;
    assert!(
        err.contains("nothing answers there") && !err.contains(&gone),
        "{err}"
    );
}
