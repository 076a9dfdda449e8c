//! What the node reports about itself: memory, processes, mounts and disks, read from `/proc`
//! and `/sys`. Parsers take text or a directory so tests feed them fixtures.

use std::collections::BTreeMap;
use std::path::Path;

use basalt_api::machine as pb;

/// `/proc/meminfo` as kibibytes by field name.
pub fn meminfo(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let n: u64 = v.split_whitespace().next()?.parse().ok()?;
            // Counts (HugePages_Total) carry no unit; everything else is in kB.
            Some((k.trim().to_string(), n))
        })
        .collect()
}

/// One process from `/proc/<pid>/stat` and friends.
fn process(dir: &Path, pid: i32) -> Option<pb::ProcessInfo> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // The command sits in parentheses and may itself hold spaces and parentheses.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let command = stat[open + 1..close].to_string();
    let rest: Vec<&str> = stat[close + 2..].split(' ').collect();
    let field = |i: usize| rest.get(i).copied().unwrap_or("0");
    let page = 4096u64;
    let args = std::fs::read(dir.join("cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .split('\0')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Some(pb::ProcessInfo {
        pid,
        ppid: field(1).parse().unwrap_or(0),
        state: field(0).to_string(),
        command,
        args,
        rss_bytes: field(21).parse::<u64>().unwrap_or(0) * page,
        cpu_ticks: field(11).parse::<u64>().unwrap_or(0) + field(12).parse::<u64>().unwrap_or(0),
        threads: field(17).parse().unwrap_or(0),
    })
}

/// Every process under a procfs mount, by pid.
pub fn processes(proc: &Path) -> Vec<pb::ProcessInfo> {
    let mut out: Vec<pb::ProcessInfo> = std::fs::read_dir(proc)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            process(&e.path(), pid)
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// Mounts from mountinfo text, with sizes from statvfs where it answers.
pub fn mounts(mountinfo: &str) -> Vec<pb::MountInfo> {
    basalt_sys::mountinfo::parse(mountinfo)
        .into_iter()
        .map(|m| {
            let (size, avail) = nix::sys::statvfs::statvfs(m.point.as_str())
                .map(|s| {
                    let f = s.fragment_size();
                    (s.blocks() * f, s.blocks_available() * f)
                })
                .unwrap_or((0, 0));
            pb::MountInfo {
                source: m.source,
                point: m.point,
                fstype: m.fstype,
                read_only: m.read_only,
                size_bytes: size,
                available_bytes: avail,
            }
        })
        .collect()
}

fn read_trim(p: &Path) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The version of the image this node runs: `VERSION_ID` of a Basalt `/etc/os-release`
/// (the image build stamps it), else this program's own version.
pub fn os_version(os_release: &Path) -> String {
    let text = std::fs::read_to_string(os_release).unwrap_or_default();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
    };
    match (field("ID").as_deref(), field("VERSION_ID")) {
        (Some("basalt"), Some(v)) if !v.is_empty() => v,
        _ => env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// Whole disks from a `/sys/class/block`-shaped directory (partitions, loop and ram devices
/// are left out).
pub fn disks(class_block: &Path) -> Vec<pb::DiskInfo> {
    let mut out: Vec<pb::DiskInfo> = std::fs::read_dir(class_block)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let d = e.path();
            if d.join("partition").exists()
                || name.starts_with("loop")
                || name.starts_with("ram")
                || name.starts_with("zram")
            {
                return None;
            }
            let sectors: u64 = read_trim(&d.join("size")).parse().unwrap_or(0);
            Some(pb::DiskInfo {
                size_bytes: sectors * 512,
                model: read_trim(&d.join("device/model")),
                serial: read_trim(&d.join("device/serial")),
                read_only: read_trim(&d.join("ro")) == "1",
                rotational: read_trim(&d.join("queue/rotational")) == "1",
                label: String::new(),
                name,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_version_comes_from_a_basalt_os_release() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("os-release");
        std::fs::write(&p, "NAME=Basalt\nID=basalt\nVERSION_ID=1.2.3-rc1\n").unwrap();
        assert_eq!(os_version(&p), "1.2.3-rc1");
        std::fs::write(&p, "ID=debian\nVERSION_ID=\"12\"\n").unwrap();
        assert_eq!(os_version(&p), env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn meminfo_fields() {
        let m =
            meminfo("MemTotal:       24576000 kB\nMemFree:  100 kB\nHugePages_Total:       0\n");
        assert_eq!(m["MemTotal"], 24_576_000);
        assert_eq!(m["MemFree"], 100);
        assert_eq!(m["HugePages_Total"], 0);
    }

    #[test]
    fn processes_from_a_fake_proc() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("42");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(
            p.join("stat"),
            "42 (my (odd) prog) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 2 0 100 1000 5 18446744073709551615",
        )
        .unwrap();
        std::fs::write(p.join("cmdline"), b"/bin/prog\0--flag\0").unwrap();
        std::fs::create_dir(d.path().join("self")).unwrap();
        let ps = processes(d.path());
        assert_eq!(ps.len(), 1);
        let x = &ps[0];
        assert_eq!((x.pid, x.ppid, x.state.as_str()), (42, 1, "S"));
        assert_eq!(x.command, "my (odd) prog");
        assert_eq!(x.args, "/bin/prog --flag");
        assert_eq!(x.cpu_ticks, 10);
        assert_eq!(x.threads, 2);
        assert_eq!(x.rss_bytes, 5 * 4096);
    }

    #[test]
    fn disks_from_a_fake_sysfs() {
        let d = tempfile::tempdir().unwrap();
        for (name, part) in [("vda", false), ("vda1", true), ("loop0", false)] {
            let p = d.path().join(name);
            std::fs::create_dir_all(p.join("queue")).unwrap();
            std::fs::write(p.join("size"), "2048\n").unwrap();
            std::fs::write(p.join("ro"), "0\n").unwrap();
            std::fs::write(p.join("queue/rotational"), "0\n").unwrap();
            if part {
                std::fs::write(p.join("partition"), "1\n").unwrap();
            }
        }
        let disks = disks(d.path());
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].name, "vda");
        assert_eq!(disks[0].size_bytes, 1024 * 1024);
    }
}
