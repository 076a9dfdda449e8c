//! Running the host tools the build leans on (dpkg-deb, depmod, mksquashfs, grub-mkrescue).

use std::path::Path;
use std::process::Command;

use crate::ImageError;

/// Checks that `tool` exists, naming the Debian package that has it.
pub fn need(tool: &str, package: &str) -> Result<(), ImageError> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(tool).is_file()
        || Path::new("/sbin").join(tool).is_file();
    if found {
        Ok(())
    } else {
        Err(ImageError::MissingTool {
            tool: tool.into(),
            package: package.into(),
        })
    }
}

/// Runs a command, returning its stdout; a failure carries its stderr.
pub fn run(cmd: &mut Command) -> Result<String, ImageError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| ImageError::Tool {
        tool: tool.clone(),
        status: "not started".into(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(ImageError::Tool {
            tool,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr)
                .trim()
                .chars()
                .take(2000)
                .collect(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
