//! The cluster's add-on manifests, applied by the control planes once the API answers: the
//! kubelets' bootstrap token and RBAC, kube-proxy's binding, CoreDNS, and the user's
//! `inlineManifests` — in that order.
//!
//! One control plane at a time holds the `basalt-addons` Lease in `kube-system` while it
//! applies. Each object is created when missing (server-side apply, field manager `basalt`)
//! and left as it is when it exists: a cluster's add-ons are the user's to change after the
//! first creation (scale CoreDNS, edit its Corefile) without a control plane's restart undoing
//! it. Where an object lives in the API (its resource name, whether it is namespaced) comes
//! from the API's discovery, so a manifest may hold any kind the cluster serves — custom
//! resources too, once their definition (applied earlier, maybe by the same manifest) is
//! established; until then the pass fails and is tried again.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use basalt_config::Config;
use serde_json::Value;

use crate::https::{Https, HttpsError};

/// The manifest of CoreDNS, with `@IMAGE@`, `@DNS_IP@`, `@DOMAIN@` and `@FORWARD@` to fill in.
const COREDNS: &str = include_str!("coredns.yaml");
/// The manifest of the local-path provisioner, with `@IMAGE@` and `@HELPER_IMAGE@`.
const LOCAL_PATH: &str = include_str!("local-path.yaml");
/// The Lease a control plane holds while it applies.
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/basalt-addons";
const LEASE_SECONDS: u64 = 60;
/// The field manager of every object applied here.
const MANAGER: &str = "basalt";

/// Named objects: one manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub name: String,
    pub objects: Vec<Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum AddonError {
    #[error(transparent)]
    Api(#[from] HttpsError),
    #[error("manifest {manifest:?}: the API serves no kind {kind} in {api_version} (yet)")]
    UnknownKind {
        manifest: String,
        api_version: String,
        kind: String,
    },
    #[error("manifest {manifest:?}: {kind} {name}: {status}: {message}")]
    Rejected {
        manifest: String,
        kind: String,
        name: String,
        status: http::StatusCode,
        message: String,
    },
    #[error("manifest {manifest:?}: {message}")]
    Manifest { manifest: String, message: String },
    #[error("the add-ons lease is held by {0}")]
    Held(String),
}

/// What a pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub created: Vec<String>,
    pub existing: usize,
}

/// What this control plane knows that the manifests depend on.
#[derive(Debug, Clone, Default)]
pub struct Node {
    /// The CoreDNS image this node's image ships (`None`: CoreDNS cannot be applied, and the
    /// pass says so).
    pub coredns_image: Option<String>,
    /// The local-path provisioner's image and its helper's (busybox), likewise.
    pub local_path_images: Option<(String, String)>,
    /// Whether pods have a name server to forward other names to (the node's, without its
    /// loopback ones): without one, CoreDNS answers the cluster's names only (its `forward`
    /// would have nowhere to go and CoreDNS would not start).
    pub upstream: bool,
}

/// The cluster's manifests for a config.
pub fn manifests(config: &Config, node: &Node) -> Result<Vec<Manifest>, AddonError> {
    let cluster = config.cluster();
    let mut out = vec![Manifest {
        name: "bootstrap".into(),
        objects: crate::kubelet::bootstrap_objects(config),
    }];
    if cluster.proxy_enabled() {
        out.push(Manifest {
            name: "kube-proxy".into(),
            objects: vec![crate::kubelet::group_binding(
                "basalt:node-proxier",
                "system:node-proxier",
                "system:nodes",
            )],
        });
    }
    if cluster.core_dns_enabled() {
        let image = node
            .coredns_image
            .as_deref()
            .ok_or_else(|| AddonError::Manifest {
                manifest: "coredns".into(),
                message: "this node's image ships no CoreDNS image".into(),
            })?;
        let dns_ip = crate::layout::dns_service_ip(config);
        let text = COREDNS
            .replace("@IMAGE@", image)
            .replace("@DNS_IP@", &dns_ip.to_string())
            .replace("@DOMAIN@", &crate::layout::dns_domain(config))
            .replace(
                "@FORWARD@",
                if node.upstream {
                    "forward . /etc/resolv.conf {\n            max_concurrent 1000\n        }"
                } else {
                    "# no upstream name server when this was applied: cluster names only"
                },
            );
        out.push(parsed("coredns", &text)?);
    }
    if cluster.storage_enabled() {
        let (image, helper) =
            node.local_path_images
                .as_ref()
                .ok_or_else(|| AddonError::Manifest {
                    manifest: "local-path".into(),
                    message: "this node's image ships no local-path provisioner image".into(),
                })?;
        let text = LOCAL_PATH
            .replace("@IMAGE@", image)
            .replace("@HELPER_IMAGE@", helper);
        out.push(parsed("local-path", &text)?);
    }
    for m in &cluster.inline_manifests {
        out.push(parsed(&m.name, &m.contents)?);
    }
    Ok(out)
}

fn parsed(name: &str, text: &str) -> Result<Manifest, AddonError> {
    let objects = basalt_config::manifests::parse(text).map_err(|errs| AddonError::Manifest {
        manifest: name.into(),
        message: errs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    })?;
    Ok(Manifest {
        name: name.into(),
        objects: objects.into_iter().map(|o| o.json).collect(),
    })
}

/// Where a kind lives in the API: its resource name and whether it is namespaced.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resource {
    plural: String,
    namespaced: bool,
}

/// The API's discovery, one group version at a time.
#[derive(Default)]
struct Discovery {
    known: HashMap<String, HashMap<String, Resource>>,
}

impl Discovery {
    async fn resource(
        &mut self,
        api: &Https,
        api_version: &str,
        kind: &str,
    ) -> Result<Option<Resource>, HttpsError> {
        if !self.known.contains_key(api_version) {
            let r = api.get(&group_version_path(api_version)).await?;
            if r.status == http::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let list = r.json()?;
            self.known
                .insert(api_version.to_string(), resources_of(&list));
        }
        Ok(self
            .known
            .get(api_version)
            .and_then(|m| m.get(kind))
            .cloned())
    }
}

/// `/api/v1` for the core group, `/apis/<group>/<version>` for the others.
fn group_version_path(api_version: &str) -> String {
    if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    }
}

/// kind → resource, from an `APIResourceList` (subresources left out).
fn resources_of(list: &Value) -> HashMap<String, Resource> {
    list["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let name = r["name"].as_str()?;
            if name.contains('/') {
                return None;
            }
            Some((
                r["kind"].as_str()?.to_string(),
                Resource {
                    plural: name.to_string(),
                    namespaced: r["namespaced"].as_bool().unwrap_or(false),
                },
            ))
        })
        .collect()
}

/// The object's path in the API, and the object as it is sent (a namespaced object without a
/// namespace goes to `default`, as kubectl sends it).
fn object_path(object: &Value, r: &Resource) -> (String, Value) {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let mut object = object.clone();
    let base = group_version_path(api_version);
    let path = if r.namespaced {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_string();
        object["metadata"]["namespace"] = Value::String(ns.clone());
        format!("{base}/namespaces/{ns}/{}/{name}", r.plural)
    } else {
        format!("{base}/{}/{name}", r.plural)
    };
    (path, object)
}

/// Creates every object that is missing, in order; leaves the others alone.
pub async fn apply(api: &Https, manifests: &[Manifest]) -> Result<Applied, AddonError> {
    let mut discovery = Discovery::default();
    let mut applied = Applied::default();
    for m in manifests {
        for object in &m.objects {
            let api_version = object["apiVersion"].as_str().unwrap_or_default();
            let kind = object["kind"].as_str().unwrap_or_default();
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let Some(r) = discovery.resource(api, api_version, kind).await? else {
                return Err(AddonError::UnknownKind {
                    manifest: m.name.clone(),
                    api_version: api_version.into(),
                    kind: kind.into(),
                });
            };
            let (path, object) = object_path(object, &r);
            let rejected = |status, body: &[u8]| AddonError::Rejected {
                manifest: m.name.clone(),
                kind: kind.into(),
                name: name.into(),
                status,
                message: status_message(body),
            };
            let got = api.get(&path).await?;
            match got.status.as_u16() {
                200 => {
                    applied.existing += 1;
                    continue;
                }
                404 => {}
                _ => return Err(rejected(got.status, &got.body)),
            }
            let body = serde_json::to_vec(&object).map_err(HttpsError::Json)?;
            let r = api
                .request(
                    http::Method::PATCH,
                    &format!("{path}?fieldManager={MANAGER}"),
                    Some(("application/apply-patch+yaml", body)),
                )
                .await?;
            if !r.status.is_success() {
                return Err(rejected(r.status, &r.body));
            }
            applied.created.push(format!("{kind}/{name}"));
        }
    }
    Ok(applied)
}

/// The `message` of a Kubernetes `Status` reply, else the body as text.
fn status_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

/// RFC 3339 with microseconds, as a Lease's times are written.
fn micro_time(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

fn parse_time(s: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// Whether a Lease as read is free for `me` at `now`: no holder, `me`, or expired.
fn lease_free(lease: &Value, me: &str, now: SystemTime) -> bool {
    let spec = &lease["spec"];
    let holder = spec["holderIdentity"].as_str().unwrap_or_default();
    if holder.is_empty() || holder == me {
        return true;
    }
    let seconds = spec["leaseDurationSeconds"]
        .as_u64()
        .unwrap_or(LEASE_SECONDS);
    spec["renewTime"]
        .as_str()
        .and_then(parse_time)
        .is_none_or(|renewed| renewed + Duration::from_secs(seconds) < now)
}

/// Takes the add-ons Lease for `me`: created when missing, taken over when free; refused
/// ([`AddonError::Held`]) while another control plane holds it.
async fn acquire(api: &Https, me: &str) -> Result<(), AddonError> {
    let now = SystemTime::now();
    let spec = serde_json::json!({
        "holderIdentity": me,
        "leaseDurationSeconds": LEASE_SECONDS,
        "acquireTime": micro_time(now),
        "renewTime": micro_time(now),
    });
    let got = api.get(LEASE).await?;
    let (method, path, lease) = match got.status.as_u16() {
        404 => (
            http::Method::POST,
            LEASE.rsplit_once('/').map_or(LEASE, |(dir, _)| dir),
            serde_json::json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": { "name": "basalt-addons", "namespace": "kube-system" },
                "spec": spec,
            }),
        ),
        200 => {
            let mut lease = got.json()?;
            if !lease_free(&lease, me, now) {
                return Err(AddonError::Held(
                    lease["spec"]["holderIdentity"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                ));
            }
            // The resourceVersion read makes the update fail if another took it meanwhile.
            lease["spec"] = spec;
            (http::Method::PUT, LEASE, lease)
        }
        _ => {
            return Err(HttpsError::Status {
                status: got.status,
                body: status_message(&got.body),
            }
            .into());
        }
    };
    let body = serde_json::to_vec(&lease).map_err(HttpsError::Json)?;
    let r = api
        .request(method, path, Some(("application/json", body)))
        .await?;
    match r.status.as_u16() {
        200 | 201 => Ok(()),
        409 => Err(AddonError::Held("another control plane".into())),
        _ => Err(HttpsError::Status {
            status: r.status,
            body: status_message(&r.body),
        }
        .into()),
    }
}

/// Gives the Lease up (the next control plane need not wait for it to expire).
async fn release(api: &Https) {
    let _ = api.request(http::Method::DELETE, LEASE, None).await;
}

/// One pass: the Lease, every manifest, the Lease given up.
pub async fn pass(api: &Https, me: &str, manifests: &[Manifest]) -> Result<Applied, AddonError> {
    acquire(api, me).await?;
    let r = apply(api, manifests).await;
    release(api).await;
    r
}

/// The reference of an image this node's image ships for the add-ons (the OCI layout `dir`
/// its registry serves), if it ships it.
pub fn shipped_image(dir: &str) -> Option<String> {
    let dir = Path::new(basalt_containerd::shipped::REGISTRY_DIR).join(dir);
    basalt_containerd::containers::layout_references(&dir)
        .ok()?
        .into_iter()
        .next()
}

impl Node {
    /// What this node's image ships and its resolver holds.
    pub fn detect() -> Node {
        Node {
            coredns_image: shipped_image("coredns"),
            local_path_images: shipped_image("local-path-provisioner")
                .zip(shipped_image("busybox")),
            upstream: std::fs::read_to_string(crate::kubelet::POD_RESOLV_CONF)
                .is_ok_and(|t| t.lines().any(|l| l.starts_with("nameserver"))),
        }
    }
}

/// On a control plane: one pass of the cluster's add-ons for `cfg`, through this node's own
/// API server as the admin (the `Addons` controller (`crate::controllers`) runs it as soon as
/// the API server runs, and again for every config).
pub async fn reconcile(
    cfg: &Config,
    node: &Node,
    pki: &Path,
    me: &str,
    port: u16,
) -> Result<(), AddonError> {
    let api = Https::from_files(
        "127.0.0.1",
        port,
        &pki.join("ca.crt"),
        &pki.join("admin.crt"),
        &pki.join("admin.key"),
    )?;
    let a = pass(&api, me, &manifests(cfg, node)?).await?;
    if a.created.is_empty() {
        tracing::info!(objects = a.existing, "add-ons: all objects in place");
    } else {
        tracing::info!(
            created = %a.created.join(", "),
            in_place = a.existing,
            "add-ons: objects created"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_configs as configs;

    #[test]
    fn coredns_serves_the_cluster_domain_at_the_tenth_service_address() {
        let g = configs();
        let node = Node {
            coredns_image: Some("registry.k8s.io/coredns/coredns:v9".into()),
            local_path_images: Some(("lpp:v1".into(), "busybox:v1".into())),
            upstream: true,
        };
        let ms = manifests(&g.controlplane, &node).unwrap();
        let names: Vec<&str> = ms.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["bootstrap", "kube-proxy", "coredns", "local-path"]);
        let lp = &ms[3].objects;
        let sc = lp.iter().find(|o| o["kind"] == "StorageClass").unwrap();
        assert_eq!(
            sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"],
            "true"
        );
        let cm = lp.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
        let helper = cm["data"]["helperPod.yaml"].as_str().unwrap();
        assert!(helper.contains("image: \"busybox:v1\""), "{helper}");
        assert!(
            cm["data"]["config.json"]
                .as_str()
                .unwrap()
                .contains("/var/local-path-provisioner")
        );
        let dns = &ms[2].objects;
        let svc = dns.iter().find(|o| o["kind"] == "Service").unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.10");
        let dep = dns.iter().find(|o| o["kind"] == "Deployment").unwrap();
        assert_eq!(dep["spec"]["replicas"], 2);
        assert_eq!(
            dep["spec"]["template"]["spec"]["containers"][0]["image"],
            "registry.k8s.io/coredns/coredns:v9"
        );
        let cm = dns.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
        let corefile = cm["data"]["Corefile"].as_str().unwrap();
        assert!(
            corefile.contains("kubernetes cluster.local in-addr.arpa"),
            "{corefile}"
        );
        assert!(
            corefile.contains("forward . /etc/resolv.conf {"),
            "{corefile}"
        );
        // No upstream: no forward (CoreDNS would not start), the cluster's names still served.
        let alone = Node {
            upstream: false,
            ..node.clone()
        };
        let ms = manifests(&g.controlplane, &alone).unwrap();
        let cm = ms[2]
            .objects
            .iter()
            .find(|o| o["kind"] == "ConfigMap")
            .unwrap();
        let corefile = cm["data"]["Corefile"].as_str().unwrap();
        assert!(!corefile.contains("forward"), "{corefile}");
        assert!(corefile.contains("kubernetes cluster.local"), "{corefile}");
        // Without the image, CoreDNS cannot be applied: said, not skipped.
        let err = manifests(&g.controlplane, &Node::default()).unwrap_err();
        assert!(err.to_string().contains("no CoreDNS image"), "{err}");
    }

    #[test]
    fn switches_leave_add_ons_out_and_inline_manifests_come_last() {
        let g = configs();
        let text = g.controlplane.to_yaml().replacen(
            "kind: ClusterConfig\n",
            "kind: ClusterConfig\ncoreDNS:\n  disabled: true\nproxy:\n  disabled: true\nstorage:\n  disabled: true\ninlineManifests:\n  - name: mine\n    contents: |\n      apiVersion: v1\n      kind: Namespace\n      metadata:\n        name: mine\n",
            1,
        );
        let cfg = Config::parse(&text, basalt_config::Mode::Metal).unwrap();
        let ms = manifests(&cfg, &Node::default()).unwrap();
        let names: Vec<&str> = ms.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["bootstrap", "mine"]);
        assert_eq!(ms[1].objects[0]["metadata"]["name"], "mine");
    }

    #[test]
    fn objects_find_their_path_through_discovery() {
        let list = serde_json::json!({"resources": [
            {"name": "deployments", "kind": "Deployment", "namespaced": true},
            {"name": "deployments/scale", "kind": "Scale", "namespaced": true},
            {"name": "clusterroles", "kind": "ClusterRole", "namespaced": false},
        ]});
        let rs = resources_of(&list);
        assert_eq!(rs.len(), 2);
        let dep = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}});
        let (path, sent) = object_path(&dep, &rs["Deployment"]);
        assert_eq!(path, "/apis/apps/v1/namespaces/default/deployments/web");
        assert_eq!(sent["metadata"]["namespace"], "default");
        let ns =
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}});
        let r = Resource {
            plural: "namespaces".into(),
            namespaced: false,
        };
        assert_eq!(object_path(&ns, &r).0, "/api/v1/namespaces/a");
    }

    #[test]
    fn a_lease_is_free_when_unheld_mine_or_expired() {
        let now = SystemTime::now();
        let lease = |holder: &str, renewed: SystemTime| {
            serde_json::json!({"spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": 60,
                "renewTime": micro_time(renewed),
            }})
        };
        assert!(lease_free(&lease("", now), "cp-1", now));
        assert!(lease_free(&lease("cp-1", now), "cp-1", now));
        assert!(!lease_free(&lease("cp-2", now), "cp-1", now));
        let old = now - Duration::from_secs(61);
        assert!(lease_free(&lease("cp-2", old), "cp-1", now));
        // Written the way the API reads it: six digits of fraction, UTC.
        let t = micro_time(SystemTime::UNIX_EPOCH + Duration::from_micros(1_500_000));
        assert_eq!(t, "1970-01-01T00:00:01.500000Z");
    }
}
