//! Basalt boot images: the read-only root (`rootfs.sqsh`), the initramfs, the hybrid
//! BIOS/UEFI ISO and the PXE assets, built reproducibly from pinned Debian packages and the
//! `init` binary; and the QEMU runner that boots them.
//!
//! This crate builds files and runs QEMU. It must not configure a node: everything a booted
//! node does is init's job.

#![forbid(unsafe_code)]

pub mod build;
pub use basalt_disk::cpio;
pub mod elf;
pub mod inputs;
pub mod kernel;
pub mod oci;
pub mod qemu;
pub mod stack;
pub mod tools;
pub mod verity;

pub use build::{Artifacts, BuildOptions, Target, build};

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: String,
        status: String,
        stderr: String,
    },
    #[error("{tool} is not installed (Debian package {package})")]
    MissingTool { tool: String, package: String },
    #[error("inputs.lock line {line}: {message}")]
    Manifest { line: usize, message: String },
    #[error(
        "{package} {version}: sha256 is {actual}, inputs.lock pins {expected}; the download is not the pinned package"
    )]
    Checksum {
        package: String,
        version: String,
        expected: String,
        actual: String,
    },
    #[error(
        "cannot download {package}={version}: {stderr} (if Debian dropped this version, update inputs.lock with `osctl image pin`)"
    )]
    Download {
        package: String,
        version: String,
        stderr: String,
    },
    #[error("{binary} needs {library}, which no pinned library package provides")]
    MissingLibrary { binary: String, library: String },
    #[error("kernel module {0:?} is neither built in nor in modules.dep")]
    UnknownModule(String),
    #[error("the rootfs holds a shell or package manager: {0}; Basalt has none")]
    Forbidden(String),
    #[error("the stack's {component}: {message}")]
    Stack {
        component: &'static str,
        message: String,
    },
    #[error("cannot build init: {0}")]
    Init(String),
}

pub(crate) fn io_err(
    action: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.display().to_string();
    move |source| ImageError::Io {
        action,
        path,
        source,
    }
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &std::path::Path) -> Result<String, ImageError> {
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut f = std::fs::File::open(path).map_err(io_err("read", path))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
