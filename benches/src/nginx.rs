//! nginx as the server workload: one single-process nginx (no daemon, no master) per mode,
//! with every path it writes under the benchmark's scratch directory, kept as a [`Proc`] so
//! it is killed by pid when dropped.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use myelin_testbed::{Pod, Proc};

/// Files served: `/small` (`small_bytes` of text) and `/big` (sparse, `big_bytes`).
#[derive(Debug)]
pub struct Content {
    pub root: PathBuf,
    pub small_bytes: u64,
    pub big_bytes: u64,
}

impl Content {
    pub fn create(root: PathBuf, small_bytes: u64, big_bytes: u64) -> Result<Content> {
        fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let small: Vec<u8> = (0..small_bytes).map(|i| b'a' + (i % 26) as u8).collect();
        fs::write(root.join("small"), small)?;
        // Sparse: no disk blocks, reads come from zeroed page-cache pages.
        let big = fs::File::create(root.join("big"))?;
        big.set_len(big_bytes)
            .with_context(|| format!("sizing {}/big to {big_bytes} bytes", root.display()))?;
        // Read it once: the first read of a hole allocates and zeroes page-cache pages, which
        // made the first mode's downloads several times slower than the later ones.
        let copied = std::io::copy(&mut fs::File::open(root.join("big"))?, &mut std::io::sink())?;
        anyhow::ensure!(copied == big_bytes, "read {copied} of {big_bytes} bytes");
        Ok(Content {
            root,
            small_bytes,
            big_bytes,
        })
    }
}

/// The configuration: one worker in the foreground, no access log, keep-alive connections
/// that are never closed by the server during a run, `sendfile` on as in Debian's default.
pub fn config(dir: &Path, content: &Content, port: u16) -> String {
    let d = dir.display();
    format!(
        "daemon off;
master_process off;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {port};
        root {root};
        location / {{ }}
    }}
}}
",
        root = content.root.display()
    )
}

/// A running nginx in a pod.
#[derive(Debug)]
pub struct Nginx {
    proc: Proc,
    dir: PathBuf,
}

impl Nginx {
    /// Writes the config under `dir` and starts nginx in `pod`.
    pub fn start(pod: &Pod, dir: &Path, content: &Content, port: u16) -> Result<Nginx> {
        fs::create_dir_all(dir)?;
        let conf = dir.join("nginx.conf");
        fs::write(&conf, config(dir, content, port))?;
        let mut cmd = Command::new(crate::tools::path("nginx")?);
        // -e: the error log before the config is read (else the compiled-in
        // /var/log/nginx/error.log); -p: the prefix for anything relative.
        cmd.arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let proc = pod.spawn(cmd)?;
        Ok(Nginx {
            proc,
            dir: dir.to_owned(),
        })
    }

    /// Fails (with nginx's error log) if nginx has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.proc.try_wait()? {
            bail!(
                "nginx exited with {status}; error log:\n{}",
                self.error_log()
            );
        }
        Ok(())
    }

    /// Waits until `probe` succeeds (e.g. a request from the client pod answers 200).
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        mut probe: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let r = probe();
            match r {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!(
                        "nginx not serving after {timeout:?}; error log:\n{}",
                        self.error_log()
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}
