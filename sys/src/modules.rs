//! Loading kernel modules from a list the image build resolved (dependencies first).

use std::path::Path;

use nix::kmod::{ModuleInitFlags, finit_module};

/// Where the image build puts the list, in the initramfs and on the root.
pub const LOAD_ORDER: &str = "/lib/modules/load.order";

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load module {module}")]
    Load {
        module: String,
        #[source]
        source: nix::Error,
    },
}

/// Parameters a module is loaded with. The bonding and dummy drivers otherwise make a `bond0`
/// and a `dummy0` of their own at load time, which networkd did not make and would not touch,
/// so a config that names them could not get the kind and mode it asks for.
fn params(path: &str) -> &'static std::ffi::CStr {
    match path.rsplit('/').next().unwrap_or_default() {
        "bonding.ko" => c"max_bonds=0",
        "dummy.ko" => c"numdummies=0",
        _ => c"",
    }
}

/// Loads the modules `order_file` lists (paths under /lib/modules, dependencies first); one
/// that is already loaded counts as loaded; a missing list loads nothing. Returns how many.
pub fn load(order_file: &str) -> Result<usize, ModuleError> {
    let order = match std::fs::read_to_string(order_file) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(ModuleError::Read {
                path: order_file.into(),
                source,
            });
        }
    };
    let mut n = 0;
    for rel in order
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let path = Path::new("/lib/modules").join(rel);
        let file = std::fs::File::open(&path).map_err(|source| ModuleError::Read {
            path: path.display().to_string(),
            source,
        })?;
        match finit_module(&file, params(rel), ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::Error::EEXIST) => n += 1,
            Err(source) => {
                return Err(ModuleError::Load {
                    module: rel.to_string(),
                    source,
                });
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bonding_and_dummy_make_no_device_of_their_own() {
        assert_eq!(
            params("kernel/drivers/net/bonding/bonding.ko"),
            c"max_bonds=0"
        );
        assert_eq!(params("kernel/drivers/net/dummy.ko"), c"numdummies=0");
        assert_eq!(params("kernel/fs/squashfs/squashfs.ko"), c"");
    }

    #[test]
    fn a_missing_list_loads_nothing() {
        assert_eq!(load("/nonexistent/load.order").unwrap(), 0);
    }
}
