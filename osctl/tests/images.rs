//! Images into a cluster (cluster tier, root, Docker): an image a user builds with `docker
//! build` (a static program on `scratch`) reaches every node with `osctl cluster load` (the
//! Kubernetes e2e runs it as a Deployment); a second load skips every node; `osctl image rm` removes it. Every bad archive
//! — truncated, not a tar, a path out of the archive, a layer that is not what the config says,
//! a manifest naming a missing file, more than the node has room for, a client gone half-way
//! — is refused by a real node with its reason, and the node's images stay as they were.
//! (That a failed import leaves no blob behind is asserted against containerd itself, in
//! basalt-containerd's tests: the API shows images, not blobs.)

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use basalt_api::machine as pb;
use basalt_api::machine::machine_client::MachineClient;
use basalt_testkit::archive::{docker_save_with, sha, tar};
use basalt_testkit::{Tier, tier};

mod common;
use common::{Destroy, docker_out as docker, ok, osctl};

/// A machine API client from the cluster's osconfig, for what osctl will not send (it checks
/// an archive before any node sees it).
fn api(oc: &Path) -> MachineClient<tonic::transport::Channel> {
    let cfg =
        basalt_config::client::ClientConfig::parse(&std::fs::read_to_string(oc).unwrap()).unwrap();
    let ctx = &cfg.contexts[cfg.context.as_ref().unwrap()];
    let tls = basalt_api::tls::client_config(
        ctx.ca.0.as_str(),
        &basalt_api::tls::Identity {
            crt: ctx.crt.0.as_str().to_string(),
            key: ctx.key.0.as_str().to_string(),
        },
    )
    .unwrap();
    let ch = basalt_api::tls::channel_in(&ctx.endpoints[0], tls, ctx.netns.as_deref()).unwrap();
    MachineClient::new(ch)
}

fn to<T>(node: &str, mut r: tonic::Request<T>) -> tonic::Request<T> {
    r.metadata_mut()
        .insert(basalt_api::auth::NODE_HEADER, node.parse().unwrap());
    r
}

/// Streams `data` to `node` as one import, 64 KiB a message, declaring `size` bytes.
async fn import_raw(
    c: &mut MachineClient<tonic::transport::Channel>,
    node: &str,
    data: Vec<u8>,
    size: i64,
) -> Result<pb::ImageImportResponse, tonic::Status> {
    let mut msgs = vec![pb::ImageImportRequest {
        namespace: String::new(),
        size,
        data: Vec::new(),
    }];
    msgs.extend(data.chunks(64 << 10).map(|d| pb::ImageImportRequest {
        namespace: String::new(),
        size: 0,
        data: d.to_vec(),
    }));
    let r = to(node, tonic::Request::new(futures::stream::iter(msgs)));
    c.image_import(r).await.map(tonic::Response::into_inner)
}

#[test]
fn images_reach_every_node_whole_or_not_at_all() {
    if !tier(Tier::Cluster, "images_reach_every_node_whole_or_not_at_all") {
        return;
    }
    let root = common::clusters_root();
    let clusters = root.as_path();
    let name = format!("i{}", std::process::id() % 100_000);
    let _guard = Destroy(clusters, &name, "docker");
    let net = "10.238.0";
    ok(
        clusters,
        &[
            "cluster",
            "create",
            "--name",
            &name,
            "--provisioner",
            "docker",
            "--controlplanes",
            "1",
            "--workers",
            "2",
            "--cidr",
            &format!("{net}.0/24"),
        ],
    );
    let dir = clusters.join(&name);
    let oc_path = dir.join("osconfig");
    let oc = oc_path.to_str().unwrap();
    let nodes = [format!("{net}.2"), format!("{net}.3"), format!("{net}.4")];
    let all = nodes.join(",");

    // A user's image: a static program on scratch, built by the host's Docker engine.
    let tag = format!("basalt-e2e/web:{name}");
    let _image = common::scratch_image(&tag);
    let ctx = tempfile::tempdir().unwrap();
    let id = docker(&["image", "inspect", "--format", "{{.Id}}", &tag]);
    let id12: String = id
        .trim()
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect();
    let full = format!("docker.io/{tag}");

    let out = ok(clusters, &["cluster", "load", "--name", &name, &tag]);
    assert_eq!(out.matches("created").count(), 3, "{out}");
    for n in &nodes {
        assert!(
            out.lines()
                .any(|l| l.starts_with(n.as_str()) && l.contains(&full) && l.contains(&id12)),
            "{n} not in\n{out}"
        );
    }
    let again = ok(clusters, &["cluster", "load", "--name", &name, &tag]);
    assert_eq!(
        again.matches("skipped: the node has it").count(),
        3,
        "{again}"
    );
    let images = ok(
        clusters,
        &[
            "--osconfig",
            oc,
            "-n",
            &all,
            "images",
            "--namespace",
            "k8s.io",
        ],
    );
    assert_eq!(
        images
            .lines()
            .filter(|l| l.contains(&full) && l.contains(&id12))
            .count(),
        3,
        "{images}"
    );

    // From standard input, as `docker save | osctl image import -` sends it; `--force` sends
    // it to a node that has it, which finds nothing to change.
    let archive = ctx.path().join("web.tar");
    docker(&["save", "--output", archive.to_str().unwrap(), &tag]);
    let piped = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} --osconfig {oc} -n {} image import --force - < {}",
            env!("CARGO_BIN_EXE_osctl"),
            nodes[1],
            archive.display()
        ))
        .env("BASALT_CLUSTERS", clusters)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&piped.stdout);
    assert!(
        piped.status.success() && said.contains(&full) && said.contains("unchanged"),
        "{said}{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _in = rt.enter();
    let mut c = api(&oc_path);

    // Bad archives, sent as they are to a worker: each refused with its reason, nothing changed.
    let worker = &nodes[2];
    let before = ok(clusters, &["--osconfig", oc, "-n", worker, "images"]);
    let good = std::fs::read(&archive).unwrap();
    let small_layer = tar(&[("f", b'0', b"content", "")]);
    let cases: Vec<(&str, Vec<u8>, i64, tonic::Code, &str)> = vec![
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            0,
            tonic::Code::InvalidArgument,
            "the archive is truncated: it ends inside",
        ),
        (
            "not an archive",
            b"just some text\n".repeat(100),
            0,
            tonic::Code::InvalidArgument,
            "not a tar archive: the header at byte 0 is not a tar header",
        ),
        (
            "dotdot",
            tar(&[("../../etc/cron.d/evil", b'0', b"x", "")]),
            0,
            tonic::Code::InvalidArgument,
            "entry \"../../etc/cron.d/evil\": a path that climbs out with \"..\"",
        ),
        (
            "absolute",
            tar(&[("/etc/passwd", b'0', b"x", "")]),
            0,
            tonic::Code::InvalidArgument,
            "entry \"/etc/passwd\": an absolute path",
        ),
        (
            "layer not as the config says",
            docker_save_with(&small_layer, &sha(b"something else"), "abc/layer.tar").0,
            0,
            tonic::Code::InvalidArgument,
            "but the config's diff_id is",
        ),
        (
            "missing layer",
            docker_save_with(&small_layer, &sha(&small_layer), "zzz/layer.tar").0,
            0,
            tonic::Code::InvalidArgument,
            "manifest.json names \"zzz/layer.tar\", which the archive does not hold",
        ),
        (
            "no image in it",
            tar(&[("notes.txt", b'0', b"hi", "")]),
            0,
            tonic::Code::InvalidArgument,
            "not an image archive",
        ),
        (
            "larger than the node's free space",
            good.clone(),
            1 << 50,
            tonic::Code::ResourceExhausted,
            "an import needs twice the archive's size",
        ),
        (
            "more bytes than declared",
            good.clone(),
            1000,
            tonic::Code::InvalidArgument,
            "more than the 1000 bytes the first message gave",
        ),
    ];
    for (case, data, declared, code, want) in cases {
        let size = if declared == 0 {
            data.len() as i64
        } else {
            declared
        };
        let e = rt
            .block_on(import_raw(&mut c, worker, data, size))
            .unwrap_err();
        assert_eq!(e.code(), code, "{case}: {e:?}");
        assert!(e.message().contains(want), "{case}: {}", e.message());
    }
    // A client gone half-way: the call is dropped with the stream still open.
    let half = good[..good.len() / 2].to_vec();
    let first = pb::ImageImportRequest {
        namespace: String::new(),
        size: good.len() as i64,
        data: half,
    };
    let stream =
        futures::StreamExt::chain(futures::stream::iter([first]), futures::stream::pending());
    let gone = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(3),
            c.image_import(to(worker, tonic::Request::new(stream))),
        )
        .await
    });
    assert!(
        gone.is_err(),
        "the import ended with the stream open: {gone:?}"
    );
    // The CLI checks the archive before it sends it.
    let not_tar = ctx.path().join("notes.txt");
    std::fs::write(&not_tar, "hello\n".repeat(100)).unwrap();
    let o = osctl(
        clusters,
        &[
            "--osconfig",
            oc,
            "-n",
            worker,
            "image",
            "import",
            not_tar.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("notes.txt: not a tar archive: the header at byte 0"),
        "{err}"
    );
    // The node answers as before, with the images it had.
    let after = ok(clusters, &["--osconfig", oc, "-n", worker, "images"]);
    assert_eq!(after, before);

    // Removed from every node; removing again names what is missing.
    let removed = ok(
        clusters,
        &["--osconfig", oc, "-n", &all, "image", "rm", &full],
    );
    assert_eq!(
        removed
            .lines()
            .filter(|l| l.ends_with(&format!(": removed {full}")))
            .count(),
        3,
        "a line per node: {removed}"
    );
    let images = ok(
        clusters,
        &[
            "--osconfig",
            oc,
            "-n",
            &all,
            "images",
            "--namespace",
            "k8s.io",
        ],
    );
    assert!(!images.contains(&full), "{images}");
    let o = osctl(
        clusters,
        &["--osconfig", oc, "-n", worker, "image", "rm", &full],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("NotFound") && err.contains(&full),
        "{err}"
    );
}
