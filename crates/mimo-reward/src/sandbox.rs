//! Sandboxed execution of untrusted, model-written programs (Python first; see [`Language`]).
//!
//! Every run is a fresh process tree:
//! * `pre_exec` (in the forked child, before exec): every inherited descriptor above 2 marked close-on-exec
//!   (so fds the launching process got without `O_CLOEXEC` never reach the program), rlimits (CPU seconds,
//!   address space, processes, file size, open files), a per-run unprivileged host uid/gid (so
//!   `RLIMIT_NPROC` is per run and nothing on the host is writable), parent-death signal;
//! * util-linux `unshare` creates new user, PID, network, mount, IPC and UTS namespaces (the user namespace
//!   maps root inside to that unprivileged uid; the network namespace has only a downed loopback);
//! * a small `/bin/sh` setup script (pid 1 of the new PID namespace) builds a new root on a tmpfs with the
//!   system directories bind-mounted read-only, a private size-capped tmpfs at `/tmp` (the working
//!   directory), the program's source read-only at `/src`, `/proc` and a few `/dev` nodes, then
//!   `pivot_root`s into it and detaches the host tree;
//! * the program runs under `setpriv` with no capabilities and `no_new_privs`.
//!
//! The wall-clock timeout kills the whole process group (`killpg(SIGKILL)`); `unshare --kill-child` and the
//! PID namespace take every descendant with it. stdout/stderr are capped; exceeding a cap kills the run.
//! The host temp dir holding the source is removed afterwards.
//!
//! Requirements: Linux with unprivileged user namespaces, run as root (to switch to the per-run uid),
//! util-linux (`unshare`, `setpriv`, `mount`, `pivot_root`) and the language runtime (python3).
//! Using the util-linux tools instead of raw `unshare(2)`/`pivot_root(2)` keeps the PID-namespace double
//! fork and mount plumbing out of `pre_exec`, where only async-signal-safe calls are allowed.

use crate::RewardError;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Result status of a run or a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    WrongAnswer,
    Timeout,
    RuntimeError,
    MemoryLimit,
    SandboxError,
}

impl Status {
    /// The snake_case name used in JSONL output.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::WrongAnswer => "wrong_answer",
            Status::Timeout => "timeout",
            Status::RuntimeError => "runtime_error",
            Status::MemoryLimit => "memory_limit",
            Status::SandboxError => "sandbox_error",
        }
    }
}

/// Supported languages. A language is a source file name plus an interpreter command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    Python,
}

impl Language {
    /// Parses a language name as used in JSONL (`"python"`, `"python3"`).
    pub fn from_name(s: &str) -> Option<Language> {
        match s.to_ascii_lowercase().as_str() {
            "python" | "python3" | "py" => Some(Language::Python),
            _ => None,
        }
    }
    fn file_name(self) -> &'static str {
        match self {
            Language::Python => "main.py",
        }
    }
    fn command(self, cfg: &SandboxConfig, src: &str) -> Vec<String> {
        match self {
            Language::Python => vec![
                cfg.python.display().to_string(),
                "-B".into(),
                "-u".into(),
                src.into(),
            ],
        }
    }
}

/// Limits and paths of the sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxConfig {
    /// Python interpreter (must live under one of `ro_binds`).
    pub python: PathBuf,
    /// Wall-clock limit per run.
    pub timeout: Duration,
    /// `RLIMIT_CPU` in seconds (0 = derive from `timeout`: ceil + 1).
    pub cpu_seconds: u64,
    /// `RLIMIT_AS` in bytes.
    pub memory_bytes: u64,
    /// `RLIMIT_NPROC` (processes and threads of the run's private uid).
    pub max_processes: u64,
    /// `RLIMIT_FSIZE` in bytes.
    pub max_file_bytes: u64,
    /// `RLIMIT_NOFILE`.
    pub max_open_files: u64,
    /// Size of the private tmpfs mounted at `/tmp` (the working directory).
    pub tmp_bytes: u64,
    /// Cap on captured stdout and on captured stderr (each); exceeding either kills the run
    /// (status `runtime_error`, detail `output limit exceeded`).
    pub max_output_bytes: usize,
    /// Host directories made visible read-only inside (symlinks are recreated as symlinks).
    pub ro_binds: Vec<PathBuf>,
    /// First host uid/gid of the per-run range (`uid_base + slot`, one slot per concurrent run).
    pub uid_base: u32,
    /// Maximum number of runs at once.
    pub concurrency: usize,
    /// Host directory for the per-run temp dirs.
    pub work_root: PathBuf,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            python: PathBuf::from("/usr/bin/python3"),
            timeout: Duration::from_secs(5),
            cpu_seconds: 0,
            memory_bytes: 1 << 30,
            max_processes: 64,
            max_file_bytes: 16 << 20,
            max_open_files: 256,
            tmp_bytes: 64 << 20,
            max_output_bytes: 8 << 20,
            ro_binds: [
                "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/etc",
            ]
            .iter()
            .map(PathBuf::from)
            .collect(),
            uid_base: 3_000_000,
            concurrency: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .min(MAX_CONCURRENCY),
            work_root: std::env::temp_dir(),
        }
    }
}

/// Most concurrent runs [`SandboxConfig::concurrency`] may ask for (also the size of the uid range used).
pub const MAX_CONCURRENCY: usize = 1024;
/// Longest wall-clock limit [`SandboxConfig::validate`] accepts.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Largest per-stream output cap [`SandboxConfig::validate`] accepts (each run buffers up to this much of
/// stdout and of stderr).
pub const MAX_OUTPUT_BYTES: usize = 1 << 30;

impl SandboxConfig {
    /// Checks that every limit is set and bounded: timeout in (0, [`MAX_TIMEOUT`]], rlimits and the tmpfs
    /// size non-zero and below `RLIM_INFINITY`, output cap in 1..=[`MAX_OUTPUT_BYTES`], concurrency in
    /// 1..=[`MAX_CONCURRENCY`], and a uid range `uid_base..uid_base + MAX_SLOTS` that avoids uid 0 and
    /// `u32::MAX` (which `setresuid` reads as "unchanged").
    pub fn validate(&self) -> Result<(), RewardError> {
        let bad = |m: String| Err(RewardError::Config(m));
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return bad(format!(
                "sandbox timeout {:?} outside (0, {:?}]",
                self.timeout, MAX_TIMEOUT
            ));
        }
        for (name, v) in [
            ("cpu_seconds", self.cpu_seconds.max(1)),
            ("memory_bytes", self.memory_bytes),
            ("max_processes", self.max_processes),
            ("max_file_bytes", self.max_file_bytes),
            ("max_open_files", self.max_open_files),
            ("tmp_bytes", self.tmp_bytes),
        ] {
            if v == 0 || v >= u64::MAX / 2 {
                return bad(format!("sandbox {name} = {v} must be in 1..2^63"));
            }
        }
        if self.max_output_bytes == 0 || self.max_output_bytes > MAX_OUTPUT_BYTES {
            return bad(format!(
                "sandbox max_output_bytes = {} must be in 1..={MAX_OUTPUT_BYTES}",
                self.max_output_bytes
            ));
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return bad(format!(
                "sandbox concurrency = {} must be in 1..={MAX_CONCURRENCY}",
                self.concurrency
            ));
        }
        if run_uid(self.uid_base, 0).is_none() || run_uid(self.uid_base, MAX_SLOTS - 1).is_none() {
            return bad(format!(
                "sandbox uid_base = {} leaves no room for {MAX_SLOTS} run uids",
                self.uid_base
            ));
        }
        Ok(())
    }
}

/// Host uid of run slot `slot`: `uid_base + slot`, or `None` when that is root, overflows or is
/// `u32::MAX` (`(uid_t)-1`, "leave unchanged" to `setresuid`, which would keep the run as root).
fn run_uid(uid_base: u32, slot: usize) -> Option<u32> {
    let uid = uid_base.checked_add(u32::try_from(slot).ok()?)?;
    (uid != 0 && uid != u32::MAX).then_some(uid)
}

/// Raw result of one program run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOutput {
    /// `Ok` (exit 0), `RuntimeError`, `Timeout`, `MemoryLimit` or `SandboxError`.
    pub status: Status,
    pub exit_code: Option<i32>,
    /// Signal that ended the program, when it was killed.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Whether stdout or stderr hit `max_output_bytes`.
    pub output_truncated: bool,
    pub wall_ms: u64,
    /// Extra explanation (e.g. `output limit exceeded`, setup failure).
    pub detail: Option<String>,
}

/// One stdin → expected stdout test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StdioTest {
    pub stdin: String,
    pub stdout: String,
}

/// Outcome of one test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestOutcome {
    pub passed: bool,
    pub status: Status,
    pub detail: Option<String>,
}

/// Token-wise output comparison (any whitespace difference, including trailing, is ignored).
pub fn outputs_match(actual: &str, expected: &str) -> bool {
    actual.split_whitespace().eq(expected.split_whitespace())
}

const SETUP_FAILED: i32 = 199;

/// Setup script run as pid 1 of the new namespaces. Args: temp dir, ro binds (`--` terminated), command.
const SETUP: &str = r#"
set -e
trap 'echo "sandbox setup failed" >&2; exit 199' EXIT
T="$1"; shift; TMPSZ="$1"; shift
R="$T/root"
mount -t tmpfs -o size=256k,mode=755,nosuid,nodev sbxroot "$R"
while [ "$1" != "--" ]; do
  d="$1"; shift
  [ -e "$d" ] || continue
  mkdir -p "$R$(dirname "$d")"
  if [ -L "$d" ]; then ln -s "$(readlink "$d")" "$R$d"
  else mkdir -p "$R$d"; mount --rbind "$d" "$R$d"; fi
done
shift
# every mount under the new root read-only (rbind brings submounts along)
while read -r _a _b _c _d m _rest; do
  case "$m" in "$R"/*)
    mount -o remount,bind,ro,nosuid,nodev "$m" 2>/dev/null || mount -o remount,bind,ro,nosuid,nodev,noexec "$m";;
  esac
done < /proc/self/mountinfo
mkdir "$R/tmp" "$R/src" "$R/proc" "$R/dev" "$R/old"
mount -t tmpfs -o "size=$TMPSZ,mode=1777,nosuid,nodev" sbxtmp "$R/tmp"
mount --bind "$T/src" "$R/src"
mount -o remount,bind,ro,nosuid,nodev "$R/src"
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
for f in null zero random urandom; do touch "$R/dev/$f"; mount --bind "/dev/$f" "$R/dev/$f"; done
cd "$R"
pivot_root . old
umount -l /old
rmdir /old
mount -o remount,bind,ro,nosuid,nodev /
cd /tmp
trap - EXIT
set +e
setpriv --no-new-privs --bounding-set=-all --inh-caps=-all -- "$@"
"#;

/// Per-run uid slots so concurrent runs never share a uid (RLIMIT_NPROC is per uid).
struct Slots {
    used: Mutex<Vec<bool>>,
    cv: Condvar,
}

static SLOTS: Slots = Slots {
    used: Mutex::new(Vec::new()),
    cv: Condvar::new(),
};
const MAX_SLOTS: usize = 4096;

struct SlotGuard(usize);

impl SlotGuard {
    fn acquire() -> SlotGuard {
        let mut used = SLOTS.used.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(i) = used.iter().position(|u| !u) {
                used[i] = true;
                return SlotGuard(i);
            }
            if used.len() < MAX_SLOTS {
                used.push(true);
                return SlotGuard(used.len() - 1);
            }
            used = SLOTS.cv.wait(used).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut used = SLOTS.used.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = used.get_mut(self.0) {
            *u = false;
        }
        SLOTS.cv.notify_one();
    }
}

/// Host temp dir of one run, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn make_temp(
    cfg: &SandboxConfig,
    uid: u32,
    lang: Language,
    code: &str,
) -> std::io::Result<TempDir> {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = cfg
        .work_root
        .join(format!("mimo-sbx-{}-{n}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir)?;
    let guard = TempDir(dir.clone());
    std::fs::create_dir(dir.join("root"))?;
    std::fs::create_dir(dir.join("src"))?;
    std::fs::write(dir.join("src").join(lang.file_name()), code)?;
    for p in [
        dir.join("src").join(lang.file_name()),
        dir.join("src"),
        dir.join("root"),
        dir.clone(),
    ] {
        std::os::unix::fs::chown(&p, Some(uid), Some(uid))?;
    }
    Ok(guard)
}

/// Reads up to `cap` bytes; on overflow sets the flag, and (if `kill_pgid`) kills the group.
fn capture(
    mut r: impl Read + Send + 'static,
    cap: usize,
    kill_pgid: Option<i32>,
) -> std::thread::JoinHandle<(Vec<u8>, bool)> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        let mut truncated = false;
        loop {
            match r.read(&mut chunk) {
                Ok(0) => break,
                Ok(k) => {
                    if buf.len() + k > cap {
                        let room = cap - buf.len();
                        buf.extend_from_slice(&chunk[..room]);
                        truncated = true;
                        if let Some(pg) = kill_pgid {
                            // SAFETY: plain syscall; pg is the run's own process group.
                            unsafe {
                                libc::killpg(pg, libc::SIGKILL);
                            }
                            break;
                        }
                    } else if !truncated {
                        buf.extend_from_slice(&chunk[..k]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        (buf, truncated)
    })
}

fn sandbox_error(detail: String, started: Instant) -> RunOutput {
    RunOutput {
        status: Status::SandboxError,
        exit_code: None,
        signal: None,
        stdout: String::new(),
        stderr: String::new(),
        output_truncated: false,
        wall_ms: started.elapsed().as_millis() as u64,
        detail: Some(detail),
    }
}

fn looks_like_oom(stderr: &str) -> bool {
    stderr.contains("MemoryError")
        || stderr.contains("Cannot allocate memory")
        || stderr.contains("std::bad_alloc")
        || stderr.contains("out of memory")
}

/// Upper bound (exclusive) for the `fcntl` fallback of [`cloexec_above_stdio`], computed in the parent
/// (reading a directory allocates, which the forked child must not): one past the highest fd now open and
/// at least the soft `RLIMIT_NOFILE` (capped at 2^20, the kernel's default `nr_open`). Descriptors opened
/// later by this process come from std and are close-on-exec already.
fn fd_scan_bound() -> libc::c_int {
    let highest = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::c_int>().ok())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscall writing into a local struct.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        rl.rlim_cur.min(1 << 20) as libc::c_int
    } else {
        1 << 20
    };
    highest.saturating_add(1).max(soft)
}

/// Marks every descriptor above 2 close-on-exec, so none of them survives the exec of `unshare` (and so
/// none reaches the sandboxed program): `close_range(3, ~0, CLOSE_RANGE_CLOEXEC)` (Linux 5.11), else
/// `fcntl(F_SETFD)` on each fd in `3..bound`. Marking rather than closing keeps std's own exec-status pipe
/// working until the exec. Async-signal-safe (raw syscalls only): called between fork and exec.
fn cloexec_above_stdio(bound: libc::c_int) -> std::io::Result<()> {
    // SAFETY: raw syscalls on this process's own descriptor table, no memory is touched.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) == 0
        {
            return Ok(());
        }
    }
    cloexec_by_fcntl(bound)
}

/// The fallback of [`cloexec_above_stdio`]: `fcntl(F_SETFD, FD_CLOEXEC)` on every open fd in `3..bound`.
fn cloexec_by_fcntl(bound: libc::c_int) -> std::io::Result<()> {
    for fd in 3..bound {
        // SAFETY: raw syscalls on this process's own descriptor table, no memory is touched.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0
                && flags & libc::FD_CLOEXEC == 0
                && libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// The CPU-seconds rlimit: `cpu_seconds`, or the wall timeout plus 2 s when unset.
fn cpu_limit(cfg: &SandboxConfig) -> u64 {
    if cfg.cpu_seconds > 0 {
        cfg.cpu_seconds
    } else {
        cfg.timeout.as_secs().saturating_add(2)
    }
}

/// The `unshare` command that runs `lang`'s program from `dir` (mounted at `/src`) as `uid` in fresh user, pid,
/// net, mount, ipc and uts namespaces, with a clean environment, piped stdio, its own process group and the
/// rlimits of `cfg` set between fork and exec.
fn sandbox_command(lang: Language, cfg: &SandboxConfig, dir: &Path, uid: u32) -> Command {
    let src = format!("/src/{}", lang.file_name());
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--user",
        "--map-root-user",
        "--pid",
        "--fork",
        "--kill-child",
        "--net",
        "--mount",
        "--ipc",
        "--uts",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        SETUP,
        "sh",
    ]);
    cmd.arg(dir).arg(cfg.tmp_bytes.to_string());
    for b in &cfg.ro_binds {
        cmd.arg(b);
    }
    cmd.arg("--").args(lang.command(cfg, &src));
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", "/tmp")
        .env("LANG", "C.UTF-8")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONIOENCODING", "utf-8")
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let cpu = cpu_limit(cfg);
    let fd_bound = fd_scan_bound();
    let limits = [
        (libc::RLIMIT_CPU, cpu, cpu.saturating_add(1)),
        (libc::RLIMIT_AS, cfg.memory_bytes, cfg.memory_bytes),
        (libc::RLIMIT_NPROC, cfg.max_processes, cfg.max_processes),
        (libc::RLIMIT_FSIZE, cfg.max_file_bytes, cfg.max_file_bytes),
        (libc::RLIMIT_NOFILE, cfg.max_open_files, cfg.max_open_files),
        (libc::RLIMIT_CORE, 0, 0),
    ];
    // SAFETY: the closure only makes async-signal-safe syscalls (close_range/fcntl, setrlimit, setgroups,
    // setres[ug]id, prctl) on stack data, as required between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            cloexec_above_stdio(fd_bound)?;
            for (res, soft, hard) in limits {
                let rl = libc::rlimit {
                    rlim_cur: soft as libc::rlim_t,
                    rlim_max: hard as libc::rlim_t,
                };
                if libc::setrlimit(res, &rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(uid, uid, uid) != 0
                || libc::setresuid(uid, uid, uid) != 0
                || libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Runs `code` once with `stdin`, under the limits of `cfg`.
pub fn run_program(lang: Language, code: &str, stdin: &[u8], cfg: &SandboxConfig) -> RunOutput {
    let started = Instant::now();
    let slot = SlotGuard::acquire();
    let Some(uid) = run_uid(cfg.uid_base, slot.0) else {
        return sandbox_error(
            format!(
                "no usable uid for slot {} from uid_base {}",
                slot.0, cfg.uid_base
            ),
            started,
        );
    };
    let tmp = match make_temp(cfg, uid, lang, code) {
        Ok(t) => t,
        Err(e) => return sandbox_error(format!("temp dir: {e}"), started),
    };
    let mut cmd = sandbox_command(lang, cfg, &tmp.0, uid);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return sandbox_error(format!("spawn unshare: {e}"), started),
    };
    let pgid = child.id() as i32;
    let kill = || {
        // SAFETY: plain syscall on the run's own process group.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    };
    let out_h = child
        .stdout
        .take()
        .map(|s| capture(s, cfg.max_output_bytes, Some(pgid)));
    let err_h = child
        .stderr
        .take()
        .map(|s| capture(s, cfg.max_output_bytes, Some(pgid)));
    if let Some(mut sin) = child.stdin.take() {
        let data = stdin.to_vec();
        // a program that never reads stdin must not block us: write from a thread, ignore EPIPE
        std::thread::spawn(move || {
            let _ = sin.write_all(&data);
        });
    }
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) => {}
            Err(_) => break None,
        }
        if started.elapsed() > cfg.timeout {
            timed_out = true;
            kill();
            break child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    // the namespace is gone with pid 1; make sure nothing of the group lingers either way
    kill();
    let (stdout, t1) = out_h.and_then(|h| h.join().ok()).unwrap_or_default();
    let (stderr, t2) = err_h.and_then(|h| h.join().ok()).unwrap_or_default();
    drop(tmp);
    drop(slot);
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    let wall_ms = started.elapsed().as_millis() as u64;
    use std::os::unix::process::ExitStatusExt;
    let (code, mut signal) = match status {
        Some(s) => (s.code(), s.signal()),
        None => (None, None),
    };
    // the setup shell reports a killed program as 128 + signal
    if let Some(c) = code {
        if c > 128 && c < 128 + 65 {
            signal = Some(c - 128);
        }
    }
    let (status, detail) = if timed_out {
        (
            Status::Timeout,
            Some(format!("wall-clock limit {:?}", cfg.timeout)),
        )
    } else if t1 || t2 {
        (
            Status::RuntimeError,
            Some("output limit exceeded".to_string()),
        )
    } else if code == Some(SETUP_FAILED) && stderr.contains("sandbox setup failed") {
        (Status::SandboxError, Some(stderr.clone()))
    } else if signal == Some(libc::SIGXCPU)
        || (signal == Some(libc::SIGKILL) && started.elapsed().as_secs() >= cpu_limit(cfg))
    {
        (Status::Timeout, Some("cpu time limit".to_string()))
    } else if code == Some(0) {
        (Status::Ok, None)
    } else if looks_like_oom(&stderr) {
        (Status::MemoryLimit, None)
    } else if signal == Some(libc::SIGXFSZ) {
        (
            Status::RuntimeError,
            Some("file size limit exceeded".to_string()),
        )
    } else {
        (
            Status::RuntimeError,
            signal.map(|s| format!("killed by signal {s}")),
        )
    };
    RunOutput {
        status,
        exit_code: code,
        signal,
        stdout,
        stderr,
        output_truncated: t1 || t2,
        wall_ms,
        detail,
    }
}

fn pool(cfg: &SandboxConfig) -> Option<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.concurrency.clamp(1, MAX_CONCURRENCY))
        .build()
        .ok()
}

/// Runs one stdin→stdout test.
pub fn run_stdio_test(
    lang: Language,
    code: &str,
    t: &StdioTest,
    cfg: &SandboxConfig,
) -> TestOutcome {
    let r = run_program(lang, code, t.stdin.as_bytes(), cfg);
    match r.status {
        Status::Ok if outputs_match(&r.stdout, &t.stdout) => TestOutcome {
            passed: true,
            status: Status::Ok,
            detail: None,
        },
        Status::Ok => TestOutcome {
            passed: false,
            status: Status::WrongAnswer,
            detail: None,
        },
        s => TestOutcome {
            passed: false,
            status: s,
            detail: r.detail.or_else(|| tail(&r.stderr)),
        },
    }
}

/// Runs stdin→stdout tests in parallel (at most `cfg.concurrency` at once); results in test order.
pub fn run_stdio_tests(
    lang: Language,
    code: &str,
    tests: &[StdioTest],
    cfg: &SandboxConfig,
) -> Vec<TestOutcome> {
    run_many(tests, cfg, |t| run_stdio_test(lang, code, t, cfg))
}

fn tail(s: &str) -> Option<String> {
    let t = s.trim();
    if t.is_empty() {
        return None;
    }
    let lines: Vec<&str> = t.lines().rev().take(3).collect();
    Some(lines.into_iter().rev().collect::<Vec<_>>().join("\n"))
}

/// The last fenced code block of a response (```python … ``` or ``` … ```), if any.
pub fn last_code_block(text: &str) -> Option<String> {
    let end = text.rfind("```")?;
    let before = &text[..end];
    let start = before.rfind("```")?;
    let body = &before[start + 3..];
    let body = body
        .strip_prefix("python")
        .or_else(|| body.strip_prefix("py"))
        .unwrap_or(body);
    let body = body.trim_matches('\n');
    (!body.trim().is_empty()).then(|| body.to_string())
}

/// Runs the solution followed by a test program (HumanEval style: the test program calls
/// `check(entry_point)`). Passes when the combined program exits 0; an `AssertionError` is a wrong answer.
pub fn run_test_program(
    lang: Language,
    code: &str,
    test_program: &str,
    cfg: &SandboxConfig,
) -> TestOutcome {
    let full = format!("{code}\n\n{test_program}\n");
    let r = run_program(lang, &full, b"", cfg);
    match r.status {
        Status::Ok => TestOutcome {
            passed: true,
            status: Status::Ok,
            detail: None,
        },
        Status::RuntimeError if r.stderr.contains("AssertionError") => TestOutcome {
            passed: false,
            status: Status::WrongAnswer,
            detail: tail(&r.stderr),
        },
        s => TestOutcome {
            passed: false,
            status: s,
            detail: r.detail.or_else(|| tail(&r.stderr)),
        },
    }
}

/// Runs a Python solution against assert tests in one sandboxed process instead of one per test: the solution,
/// then each test `exec`'d in turn, its verdict printed after a per-run nonce. Every test gets the verdict
/// [`run_test_program`] would give it: a test that passes or fails its assert in the batch keeps that verdict;
/// a test that raised anything else or has no verdict (a crash, a timeout, an `exit`, lost output) is re-run
/// on its own; a solution that fails before the first test fails every test with the run's status (the same
/// program prefix fails the same way alone). What the batch does not isolate: a test that mutates the
/// solution's globals is seen by the tests after it, as in a pytest module. Other languages run per test.
pub fn run_assert_tests(
    lang: Language,
    code: &str,
    tests: &[String],
    cfg: &SandboxConfig,
) -> Vec<TestOutcome> {
    if lang != Language::Python || tests.len() < 2 {
        return run_many(tests, cfg, |t| run_test_program(lang, code, t, cfg));
    }
    let nonce = format!(
        "mimo-{:016x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (std::process::id() as u64).rotate_left(32)
    );
    let list = serde_json::to_string(tests).unwrap_or_else(|_| "[]".into());
    let harness = format!(
        "{code}\n\nprint('\\n{nonce} loaded', flush=True)\n\
         for _mimo_i, _mimo_t in enumerate({list}):\n    \
         try:\n        exec(_mimo_t, globals())\n        _mimo_v = 'pass'\n    \
         except AssertionError:\n        _mimo_v = 'fail'\n    \
         except BaseException:\n        _mimo_v = 'other'\n    \
         print('\\n{nonce}', _mimo_i, _mimo_v, flush=True)\n"
    );
    let r = run_program(lang, &harness, b"", cfg);
    let marker = format!("{nonce} ");
    let mut loaded = false;
    let mut verdicts: Vec<Option<bool>> = vec![None; tests.len()];
    for line in r.stdout.lines() {
        let Some(rest) = line.strip_prefix(&marker) else {
            continue;
        };
        let mut w = rest.split(' ');
        match (w.next(), w.next()) {
            (Some("loaded"), None) => loaded = true,
            (Some(i), Some(v)) if loaded => {
                if let Some(slot) = i.parse::<usize>().ok().and_then(|i| verdicts.get_mut(i)) {
                    *slot = match v {
                        "pass" => Some(true),
                        "fail" => Some(false),
                        _ => None,
                    };
                }
            }
            _ => {}
        }
    }
    if !loaded {
        let status = match r.status {
            Status::Ok => Status::RuntimeError,
            s => s,
        };
        let detail = r.detail.or_else(|| tail(&r.stderr));
        return tests
            .iter()
            .map(|_| TestOutcome {
                passed: false,
                status,
                detail: detail.clone(),
            })
            .collect();
    }
    let redo: Vec<usize> = (0..tests.len())
        .filter(|&i| verdicts[i].is_none())
        .collect();
    let mut redone = run_many(&redo, cfg, |&i| {
        run_test_program(lang, code, &tests[i], cfg)
    })
    .into_iter();
    verdicts
        .iter()
        .map(|v| match v {
            Some(true) => TestOutcome {
                passed: true,
                status: Status::Ok,
                detail: None,
            },
            Some(false) => TestOutcome {
                passed: false,
                status: Status::WrongAnswer,
                detail: None,
            },
            None => redone.next().unwrap_or(TestOutcome {
                passed: false,
                status: Status::SandboxError,
                detail: Some("missing re-run".into()),
            }),
        })
        .collect()
}

/// Runs many independent jobs with the concurrency limit of `cfg` (results in input order).
pub fn run_many<T: Sync, O: Send>(
    items: &[T],
    cfg: &SandboxConfig,
    f: impl Fn(&T) -> O + Sync + Send,
) -> Vec<O> {
    match pool(cfg) {
        Some(p) => p.install(|| items.par_iter().map(&f).collect()),
        None => items.iter().map(f).collect(),
    }
}

/// Checks that the sandbox works on this machine by running a trivial program.
pub fn probe(cfg: &SandboxConfig) -> Result<(), String> {
    if !Path::new(&cfg.python).exists() {
        return Err(format!("interpreter {} not found", cfg.python.display()));
    }
    let r = run_program(Language::Python, "print(6*7)", b"", cfg);
    if r.status == Status::Ok && r.stdout.trim() == "42" {
        Ok(())
    } else {
        Err(format!(
            "probe failed: {:?} {} {}",
            r.status,
            r.detail.unwrap_or_default(),
            r.stderr
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Descriptors listed in a child's `/proc/self/fd` when `hook` runs before its exec.
    fn child_fds(hook: fn(libc::c_int) -> std::io::Result<()>) -> Vec<i32> {
        let bound = fd_scan_bound();
        let mut cmd = Command::new("/bin/ls");
        cmd.arg("/proc/self/fd").stdout(Stdio::piped());
        // SAFETY: the hook only makes raw fcntl/close_range syscalls.
        unsafe {
            cmd.pre_exec(move || hook(bound));
        }
        let out = cmd.output().map(|o| o.stdout).unwrap_or_default();
        String::from_utf8_lossy(&out)
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect()
    }

    #[test]
    fn inherited_fds_are_marked_cloexec_by_both_paths() {
        if !Path::new("/proc/self/fd").exists() || !Path::new("/bin/ls").exists() {
            eprintln!("SKIP: no /proc or /bin/ls");
            return;
        }
        let mut p = [0i32; 2];
        // SAFETY: pipe(2) creates two descriptors without FD_CLOEXEC; F_DUPFD a third, above 100.
        let high = unsafe {
            assert_eq!(libc::pipe(p.as_mut_ptr()), 0);
            libc::fcntl(p[0], libc::F_DUPFD, 100)
        };
        let leaked = [p[0], p[1], high];
        let plain = child_fds(|_| Ok(()));
        let by_range = child_fds(cloexec_above_stdio);
        let by_fcntl = child_fds(cloexec_by_fcntl);
        // SAFETY: closing the descriptors this test created.
        unsafe {
            for fd in leaked {
                libc::close(fd);
            }
        }
        assert!(leaked.iter().all(|fd| plain.contains(fd)), "{plain:?}");
        for got in [by_range, by_fcntl] {
            // ls sees 0, 1, 2 and the directory it is reading
            assert!(got.iter().all(|&fd| fd <= 3), "{got:?}");
        }
    }
}
