//! The external programs the benchmark runs, found up front with a clear error.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// Where `tool` is: on `PATH`, or in an sbin directory (nginx lives in `/usr/sbin`, which a
/// non-login root shell may not have on `PATH`).
pub fn path(tool: &str) -> Result<PathBuf> {
    let from_env = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let sbin = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    if let Some(p) = from_env
        .into_iter()
        .chain(sbin)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
    {
        return Ok(p);
    }
    // nginx, haproxy, wrk and curl: each in the Debian package of the same name.
    bail!("{tool} not found on PATH or in /usr/sbin: install it (Debian package `{tool}`)")
}
