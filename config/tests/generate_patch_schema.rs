//! gen config, patches, the client config and the checked-in JSON Schema.
#![allow(clippy::unwrap_used)]

use basalt_config::client::ClientConfig;
use basalt_config::generate::{self, GenOptions};
use basalt_config::patch::{Patch, PatchError};
use basalt_config::v1alpha1::MachineType;
use basalt_config::{Config, ConfigError, Document, Mode};
use x509_parser::prelude::*;

fn opts() -> GenOptions {
    GenOptions {
        cluster_name: "demo".parse().unwrap(),
        endpoint: "https://10.5.0.2:6443".parse().unwrap(),
        with_kubespan: false,
        secrets: None,
        install_disk: None,
    }
}

fn parse_cert(pem_text: &str) -> (Vec<u8>, X509Certificate<'static>) {
    let (_, pem) = parse_x509_pem(pem_text.as_bytes()).unwrap();
    let der: &'static [u8] = Box::leak(pem.contents.into_boxed_slice());
    let (_, cert) = parse_x509_certificate(der).unwrap();
    (der.to_vec(), cert)
}

#[test]
fn gen_config_makes_valid_configs_and_an_admin_certificate() {
    let g = generate::generate(&opts()).unwrap();
    // The written files parse back to the same configs.
    let cp = Config::parse(&g.controlplane.to_yaml(), Mode::Metal).unwrap();
    let worker = Config::parse(&g.worker.to_yaml(), Mode::Metal).unwrap();
    assert_eq!(cp.machine().machine_type, MachineType::ControlPlane);
    assert_eq!(worker.machine().machine_type, MachineType::Worker);
    // Workers get no signing keys but the OS CA's.
    assert!(worker.secrets().certs.etcd.is_none());
    assert!(worker.secrets().certs.kubernetes.key.is_none());
    assert!(worker.secrets().service_account_key.is_none());
    assert!(cp.secrets().certs.etcd.as_ref().unwrap().key.is_some());
    assert_eq!(cp.cluster().id, worker.cluster().id);

    let client = ClientConfig::parse(&g.client.to_yaml()).unwrap();
    let ctx = &client.contexts["demo"];
    assert_eq!(client.context.as_deref(), Some("demo"));
    assert_eq!(ctx.endpoints, vec!["10.5.0.2".to_string()]);
    let (_, admin) = parse_cert(ctx.crt.0.as_str());
    let (_, ca) = parse_cert(ctx.ca.0.as_str());
    let orgs: Vec<&str> = admin
        .subject()
        .iter_organization()
        .map(|o| o.as_str().unwrap())
        .collect();
    assert_eq!(orgs, vec!["os:admin"]);
    admin
        .verify_signature(Some(ca.public_key()))
        .expect("admin cert is signed by the OS CA");
    let days =
        (admin.validity().not_after.timestamp() - admin.validity().not_before.timestamp()) / 86400;
    assert!(
        (365..=366).contains(&days),
        "admin cert valid for {days} days"
    );
    assert!(ca.is_ca());
    let eku = admin.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
}

#[test]
fn with_secrets_reuses_the_cluster_identity() {
    let secrets = generate::new_secrets().unwrap();
    let text = generate::secrets_to_yaml(&secrets);
    let parsed = generate::parse_secrets(&text).unwrap();
    let mut o = opts();
    o.secrets = Some(parsed);
    let a = generate::generate(&o).unwrap();
    let b = generate::generate(&o).unwrap();
    assert_eq!(a.controlplane.cluster().id, b.controlplane.cluster().id);
    assert_eq!(a.controlplane.secrets(), b.controlplane.secrets());
    assert_eq!(
        a.controlplane.secrets().cluster_secret,
        secrets.cluster_secret
    );
    // A worker config is not a secrets bundle: no CA keys for Kubernetes and etcd.
    let mut o = opts();
    o.secrets = Some(generate::worker_secrets(&secrets));
    let err = generate::generate(&o).unwrap_err();
    assert!(
        err.to_string().contains("Kubernetes and etcd CA keys"),
        "{err}"
    );
}

#[test]
fn kubespan_flag_adds_kubespan_and_discovery() {
    let mut o = opts();
    o.with_kubespan = true;
    let g = generate::generate(&o).unwrap();
    assert!(g.controlplane.kubespan().unwrap().enabled);
    assert!(
        g.worker
            .documents()
            .any(|d| matches!(d, Document::Discovery(x) if x.enabled))
    );
}

#[test]
fn json_patch_addresses_documents_by_kind_and_name() {
    let g = generate::generate(&opts()).unwrap();
    let patch = Patch::parse(
        r#"
- op: add
  path: /MachineConfig/nodeLabels
  value: {zone: closet}
- op: add
  path: /LinkConfig=eth0
  value: {addresses: [10.5.0.3/24], mtu: 1500}
- op: replace
  path: /LinkConfig=eth0/mtu
  value: 9000
"#,
    )
    .unwrap();
    let patched = patch.apply(&g.worker, Mode::Metal).unwrap();
    assert_eq!(patched.machine().node_labels["zone"], "closet");
    let link = patched
        .documents()
        .find_map(|d| match d {
            Document::Link(l) => Some(l),
            _ => None,
        })
        .unwrap();
    assert_eq!((link.name.as_str(), link.mtu), ("eth0", Some(9000)));
    // The original is untouched.
    assert!(g.worker.machine().node_labels.is_empty());

    let remove = Patch::parse("[{op: remove, path: /LinkConfig=eth0}]").unwrap();
    let back = remove.apply(&patched, Mode::Metal).unwrap();
    assert!(!back.documents().any(|d| matches!(d, Document::Link(_))));

    let bad = Patch::parse("[{op: remove, path: /LinkConfig=eth9}]").unwrap();
    assert!(matches!(
        bad.apply(&patched, Mode::Metal),
        Err(PatchError::JsonPatch(_))
    ));
}

#[test]
fn strategic_merge_patch_merges_by_kind_and_name() {
    let g = generate::generate(&opts()).unwrap();
    let add = Patch::parse(
        "apiVersion: v1alpha1\nkind: LinkConfig\nname: eth0\naddresses: [10.5.0.3/24]\n---\napiVersion: v1alpha1\nkind: MachineConfig\ninstall: {disk: /dev/vda}\nnodeLabels: {a: b}\n",
    )
    .unwrap();
    let cfg = add.apply(&g.worker, Mode::Metal).unwrap();
    assert_eq!(
        cfg.machine().install.as_ref().unwrap().disk.as_deref(),
        Some("/dev/vda")
    );
    assert_eq!(
        cfg.machine().machine_type,
        MachineType::Worker,
        "merge keeps other fields"
    );
    let del = Patch::parse(
        "apiVersion: v1alpha1\nkind: MachineConfig\ninstall: null\n---\napiVersion: v1alpha1\nkind: LinkConfig\nname: eth0\n$patch: delete\n",
    )
    .unwrap();
    let cfg2 = del.apply(&cfg, Mode::Metal).unwrap();
    assert!(cfg2.machine().install.is_none());
    assert!(!cfg2.documents().any(|d| matches!(d, Document::Link(_))));
    assert_eq!(cfg2.machine().node_labels["a"], "b");
}

#[test]
fn a_patch_that_breaks_the_config_is_rejected_with_the_problem() {
    let g = generate::generate(&opts()).unwrap();
    let patch = Patch::parse("[{op: replace, path: /MachineConfig/type, value: boss}]").unwrap();
    let err = patch.apply(&g.worker, Mode::Metal).unwrap_err();
    let PatchError::Invalid(ConfigError::Invalid(problems)) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        problems.0[0].to_string(),
        "document 1 (MachineConfig): .type: \"boss\" is not one of controlplane, worker"
    );
}

#[test]
fn client_config_rejects_unknown_context_and_merges() {
    let g = generate::generate(&opts()).unwrap();
    let mut a = g.client.clone();
    let renamed = a.merge(g.client.clone());
    assert_eq!(renamed, vec!["demo-1".to_string()]);
    assert_eq!(a.context.as_deref(), Some("demo-1"));
    let text = a.to_yaml().replace("context: demo-1", "context: nope");
    let err = ClientConfig::parse(&text).unwrap_err().to_string();
    assert!(
        err.contains("names context \"nope\", which is not defined"),
        "{err}"
    );
}

/// The schema in docs/ is generated from the types; regenerate with
/// `BASALT_BLESS=1 cargo test -p basalt-config --test generate_patch_schema`.
#[test]
fn checked_in_schema_is_current() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schema/config.schema.json");
    let want =
        serde_json::to_string_pretty(&basalt_config::schema::config_schema()).unwrap() + "\n";
    if std::env::var_os("BASALT_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/schema/config.schema.json is stale: regenerate it (see this test's doc)"
    );
}

#[test]
fn schema_matches_the_decoder() {
    let schema = basalt_config::schema::config_schema();
    let defs = schema["$defs"].as_object().unwrap();
    let link = &defs["LinkConfigDocument"];
    let props: Vec<&str> = link["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = vec!["apiVersion", "kind"];
    want.extend(basalt_config::v1alpha1::LinkConfig::FIELDS);
    assert_eq!(props, want);
    assert_eq!(link["additionalProperties"], false);
    let required = link["required"].as_array().unwrap();
    assert!(required.contains(&"name".into()) && !required.contains(&"mtu".into()));
    for kind in basalt_config::document::KINDS {
        assert!(
            defs.contains_key(&format!("{kind}Document")),
            "{kind} has no schema"
        );
    }
}

/// The field reference in docs/ is generated too; same regeneration as the schema.
#[test]
fn checked_in_reference_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config-reference.md");
    let want = basalt_config::schema::markdown_reference();
    if std::env::var_os("BASALT_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/config-reference.md is stale: regenerate it (BASALT_BLESS=1)"
    );
}

/// A `$patch` anywhere but a document's top level, or any but `delete`, is refused with its
/// line instead of being ignored.
#[test]
fn a_patch_directive_it_does_not_carry_out_is_refused() {
    for (text, want) in [
        (
            "kind: MachineConfig\nnodeLabels:\n  $patch: delete\n",
            "line 3: $patch is understood only at a document's top level",
        ),
        (
            "kind: LinkConfig\nname: eth0\naddresses:\n  - $patch: replace\n",
            "line 4: $patch is understood only at a document's top level",
        ),
        (
            "kind: LinkConfig\nname: eth0\n$patch: replace\n",
            "line 3: $patch: string \"replace\" is not understood",
        ),
    ] {
        let e = basalt_config::patch::Patch::parse(text).unwrap_err();
        assert!(e.to_string().contains(want), "{text}: {e}");
    }
    assert!(
        basalt_config::patch::Patch::parse("kind: LinkConfig\nname: eth0\n$patch: delete\n")
            .is_ok()
    );
}
