//! What is mounted where, from `/proc/self/mountinfo`.

/// One mount: its mount point, filesystem type and whether it is read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub point: String,
    pub fstype: String,
    pub read_only: bool,
    /// What is mounted: a device, or the filesystem's name for pseudo-filesystems.
    pub source: String,
}

/// Parses mountinfo text (see proc(5)); later mounts over the same point win.
pub fn parse(text: &str) -> Vec<Mount> {
    let mut out: Vec<Mount> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(point), Some(opts), Some(fstype)) =
            (fields.get(4), fields.get(5), fields.get(sep + 1))
        else {
            continue;
        };
        let m = Mount {
            point: unescape(point),
            fstype: (*fstype).to_string(),
            read_only: opts.split(',').any(|o| o == "ro"),
            source: fields.get(sep + 2).map(|s| unescape(s)).unwrap_or_default(),
        };
        out.retain(|x| x.point != m.point);
        out.push(m);
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo() {
        let text = "22 1 7:0 / / ro,relatime shared:1 - squashfs /dev/loop0 ro\n\
                    23 22 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw,size=1k\n\
                    30 22 0:30 / /var rw,relatime - tmpfs tmpfs rw\n\
                    31 22 0:31 / /my\\040dir rw - tmpfs tmpfs rw\n";
        let m = parse(text);
        assert_eq!(
            m[0],
            Mount {
                point: "/".into(),
                fstype: "squashfs".into(),
                read_only: true,
                source: "/dev/loop0".into(),
            }
        );
        assert_eq!(
            m[2],
            Mount {
                point: "/var".into(),
                fstype: "tmpfs".into(),
                read_only: false,
                source: "tmpfs".into(),
            }
        );
        assert_eq!(m[3].point, "/my dir");
    }
}
