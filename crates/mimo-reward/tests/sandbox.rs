//! Sandbox integration tests, including the hostile-program suite. They need root and unprivileged user
//! namespaces (as on CI); where the sandbox cannot start they print why and return, unless
//! `MIMO_REQUIRE_SANDBOX` is set, in which case they fail.

use mimo_reward::sandbox::{
    probe, run_assert_tests, run_program, run_stdio_tests, run_test_program, Language,
    SandboxConfig, Status, StdioTest,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// CPU-hungry hostile tests run one at a time (CI machines have 2 cores; a fork bomb next to a timing-
/// sensitive test would starve it).
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn cfg(name: &str) -> Option<SandboxConfig> {
    let work = std::env::temp_dir().join(format!("mimo-reward-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).ok()?;
    let cfg = SandboxConfig {
        timeout: Duration::from_secs(2),
        memory_bytes: 512 << 20,
        max_output_bytes: 1 << 20,
        work_root: work,
        ..SandboxConfig::default()
    };
    match probe(&cfg) {
        Ok(()) => Some(cfg),
        Err(e) => {
            // CI sets MIMO_REQUIRE_SANDBOX=1 so that a broken sandbox fails instead of skipping.
            assert!(
                std::env::var("MIMO_REQUIRE_SANDBOX").is_err(),
                "sandbox unavailable: {e}"
            );
            eprintln!("SKIP sandbox test {name}: {e}");
            None
        }
    }
}

/// The per-run temp dirs are gone afterwards.
fn assert_clean(cfg: &SandboxConfig) {
    let left: Vec<PathBuf> = std::fs::read_dir(&cfg.work_root)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "temp dirs left behind: {left:?}");
    let _ = std::fs::remove_dir_all(&cfg.work_root);
}

/// No process of the sandbox uid range is alive on the host.
fn assert_no_sandbox_processes(cfg: &SandboxConfig) {
    let lo = cfg.uid_base;
    let hi = cfg.uid_base + 4096;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut alive = Vec::new();
        if let Ok(d) = std::fs::read_dir("/proc") {
            for e in d.filter_map(|e| e.ok()) {
                let st = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
                if let Some(line) = st.lines().find(|l| l.starts_with("Uid:")) {
                    let uid: u32 = line
                        .split_whitespace()
                        .nth(1)
                        .and_then(|x| x.parse().ok())
                        .unwrap_or(0);
                    if uid >= lo && uid < hi && !st.contains("State:\tZ") {
                        alive.push(e.path());
                    }
                }
            }
        }
        if alive.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sandbox processes still alive: {alive:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn py(code: &str, cfg: &SandboxConfig) -> mimo_reward::sandbox::RunOutput {
    run_program(Language::Python, code, b"", cfg)
}

#[test]
fn trivial_program_and_stdin() {
    let Some(cfg) = cfg("trivial") else { return };
    let r = run_program(Language::Python, "print(int(input())*2)", b"21\n", &cfg);
    assert_eq!(r.status, Status::Ok, "{r:?}");
    assert_eq!(r.stdout.trim(), "42");
    let r = py("import sys; sys.exit(3)", &cfg);
    assert_eq!(r.status, Status::RuntimeError);
    assert_eq!(r.exit_code, Some(3));
    let r = py("raise ValueError('boom')", &cfg);
    assert_eq!(r.status, Status::RuntimeError);
    assert!(r.stderr.contains("ValueError"));
    assert_clean(&cfg);
}

#[test]
fn stdio_tests_parallel_and_tokenwise() {
    let Some(cfg) = cfg("stdio") else { return };
    let code = "a, b = map(int, input().split())\nprint(a + b, '  ')\n";
    let mut tests: Vec<StdioTest> = (0..8)
        .map(|i| StdioTest {
            stdin: format!("{i} {i}\n"),
            stdout: format!("{}\n\n", 2 * i),
        })
        .collect();
    tests.push(StdioTest {
        stdin: "1 1\n".into(),
        stdout: "3".into(),
    });
    let out = run_stdio_tests(Language::Python, code, &tests, &cfg);
    assert_eq!(out.len(), 9);
    assert!(
        out[..8].iter().all(|o| o.passed && o.status == Status::Ok),
        "{out:?}"
    );
    assert!(!out[8].passed);
    assert_eq!(out[8].status, Status::WrongAnswer);
    assert_clean(&cfg);
}

#[test]
fn humaneval_style_test_program() {
    let Some(cfg) = cfg("heval") else { return };
    let test = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n\ncheck(add)\n";
    let good = run_test_program(
        Language::Python,
        "def add(a, b):\n    return a + b\n",
        test,
        &cfg,
    );
    assert!(good.passed && good.status == Status::Ok, "{good:?}");
    let bad = run_test_program(
        Language::Python,
        "def add(a, b):\n    return a - b\n",
        test,
        &cfg,
    );
    assert!(!bad.passed);
    assert_eq!(bad.status, Status::WrongAnswer);
    let crash = run_test_program(
        Language::Python,
        "def add(a, b):\n    return a + None\n",
        test,
        &cfg,
    );
    assert_eq!(crash.status, Status::RuntimeError);
    assert_clean(&cfg);
}

#[test]
fn batched_assert_tests_give_each_test_its_own_verdict() {
    let _g = heavy();
    let Some(cfg) = cfg("batch") else { return };
    let solution = "def f(x):\n    print('mimo-0000000000000000 0 pass')\n    return 2 * x\n";
    let tests: Vec<String> = [
        "assert f(1) == 2",
        "assert f(2) == 5",
        "assert f(None) == 0",     // TypeError: a runtime error, re-run alone
        "import sys\nsys.exit(0)", // exits 0 alone: passes there, so here too
        "assert f(3) == 6",        // after the exit: re-run alone
        "assert f(4) == 8, 'x' * 10",
        "while True:\n    pass", // hangs: the batch times out, re-run alone
        "assert f(5) == 11",
    ]
    .iter()
    .map(|t| t.to_string())
    .collect();
    let batched = run_assert_tests(Language::Python, solution, &tests, &cfg);
    let alone: Vec<_> = tests
        .iter()
        .map(|t| run_test_program(Language::Python, solution, t, &cfg))
        .collect();
    let verdicts = |v: &[mimo_reward::sandbox::TestOutcome]| -> Vec<(bool, Status)> {
        v.iter().map(|o| (o.passed, o.status)).collect()
    };
    assert_eq!(verdicts(&batched), verdicts(&alone));
    assert_eq!(
        batched.iter().map(|o| o.passed).collect::<Vec<_>>(),
        [true, false, false, true, true, true, false, false]
    );
    // A solution that does not load fails every test with its status, without re-runs.
    let broken = run_assert_tests(Language::Python, "def f(x) return x\n", &tests[..2], &cfg);
    assert!(
        broken
            .iter()
            .all(|o| !o.passed && o.status == Status::RuntimeError),
        "{broken:?}"
    );
    assert_clean(&cfg);
}

#[test]
fn hostile_fork_bomb() {
    let _g = heavy();
    let Some(cfg) = cfg("fork") else { return };
    let r = py(
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        &cfg,
    );
    assert_eq!(r.status, Status::Timeout, "{r:?}");
    assert_no_sandbox_processes(&cfg);
    assert_clean(&cfg);
}

#[test]
fn hostile_memory_bomb() {
    let _g = heavy();
    let Some(cfg) = cfg("mem") else { return };
    let r = py("x = bytearray(8 * 1024**3)\nprint(len(x))", &cfg);
    assert_eq!(r.status, Status::MemoryLimit, "{r:?}");
    let r = py("a = []\nwhile True:\n    a.append(' ' * 10**7)\n", &cfg);
    assert_eq!(r.status, Status::MemoryLimit, "{r:?}");
    assert_clean(&cfg);
}

#[test]
fn hostile_infinite_loop_and_sleep() {
    let _g = heavy();
    let Some(cfg) = cfg("loop") else { return };
    let t = Instant::now();
    let r = py("while True:\n    pass\n", &cfg);
    assert_eq!(r.status, Status::Timeout, "{r:?}");
    let r = py("import time\ntime.sleep(100)\n", &cfg);
    assert_eq!(r.status, Status::Timeout, "{r:?}");
    // a child that ignores SIGTERM and outlives its parent is killed too
    let r = py(
        "import os, time, signal\nif os.fork() == 0:\n    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n    os.setsid()\n    time.sleep(100)\nelse:\n    time.sleep(100)\n",
        &cfg,
    );
    assert_eq!(r.status, Status::Timeout, "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(60));
    assert_no_sandbox_processes(&cfg);
    assert_clean(&cfg);
}

#[test]
fn hostile_network() {
    let Some(cfg) = cfg("net") else { return };
    // only loopback exists and it is down: connecting anywhere fails inside the sandbox
    // (127.0.0.1 is used so that a broken sandbox would still send nothing off this machine)
    let r = py(
        "import socket\nprint(socket.if_nameindex())\ns = socket.create_connection(('127.0.0.1', 9), timeout=1)\n",
        &cfg,
    );
    assert_eq!(r.status, Status::RuntimeError, "{r:?}");
    assert!(
        r.stdout.contains("'lo'") && !r.stdout.contains("eth"),
        "{r:?}"
    );
    assert!(r.stderr.contains("unreachable"), "{r:?}");
    assert_clean(&cfg);
}

#[test]
fn hostile_filesystem() {
    let Some(cfg) = cfg("fs") else { return };
    for target in [
        "/usr/evil",
        "/etc/evil",
        "/evil",
        "/src/evil",
        "/proc/sys/kernel/hostname",
    ] {
        let r = py(&format!("open({target:?}, 'w').write('x')\n"), &cfg);
        assert_eq!(r.status, Status::RuntimeError, "{target}: {r:?}");
        assert!(!std::path::Path::new("/usr/evil").exists());
        assert!(!std::path::Path::new("/etc/evil").exists());
    }
    // the private /tmp is writable
    let r = py(
        "open('/tmp/ok', 'w').write('x')\nprint(open('ok').read())\n",
        &cfg,
    );
    assert_eq!(r.status, Status::Ok, "{r:?}");
    // the invoking user's home is not visible
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let r = py(&format!("import os\nprint(os.listdir({home:?}))\n"), &cfg);
    assert_eq!(r.status, Status::RuntimeError, "{r:?}");
    let r = py("print(open('/root/.bashrc').read())\n", &cfg);
    assert_eq!(r.status, Status::RuntimeError, "{r:?}");
    // files larger than RLIMIT_FSIZE cannot be written
    let small = SandboxConfig {
        max_file_bytes: 1 << 20,
        ..cfg.clone()
    };
    let r = py("open('/tmp/big', 'wb').write(b'x' * (4 << 20))\n", &small);
    assert_eq!(r.status, Status::RuntimeError, "{r:?}");
    assert_clean(&cfg);
}

#[test]
fn hostile_kill_parent() {
    let Some(cfg) = cfg("kill") else { return };
    let me = std::process::id();
    let code = format!(
        "import os, signal\nfor pid in (os.getppid(), 1, {me}):\n    try:\n        os.kill(pid, signal.SIGKILL)\n    except Exception as e:\n        print('denied', pid, type(e).__name__)\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept Exception:\n    pass\nprint('alive')\n"
    );
    let r = py(&code, &cfg);
    // we are still here; the program itself survives and cannot reach the host
    assert_eq!(r.status, Status::Ok, "{r:?}");
    assert!(r.stdout.contains("alive"));
    assert_clean(&cfg);
}

#[test]
fn hostile_huge_output() {
    let _g = heavy();
    let Some(cfg) = cfg("out") else { return };
    let t = Instant::now();
    let cfg = SandboxConfig {
        timeout: Duration::from_secs(20),
        ..cfg
    };
    let r = py("import sys\nsys.stdout.write('x' * 100_000_000)\n", &cfg);
    assert_eq!(r.status, Status::RuntimeError, "{r:?}");
    assert!(r.output_truncated);
    assert!(r.stdout.len() <= cfg.max_output_bytes);
    assert!(t.elapsed() < Duration::from_secs(30));
    let r = py(
        "import sys\nwhile True:\n    sys.stderr.write('y' * 65536)\n",
        &cfg,
    );
    assert!(r.stderr.len() <= cfg.max_output_bytes);
    assert_eq!(r.status, Status::RuntimeError, "{:?}", r.detail);
    assert_eq!(r.detail.as_deref(), Some("output limit exceeded"));
    assert_no_sandbox_processes(&cfg);
    assert_clean(&cfg);
}

#[test]
fn code_jsonl_end_to_end() {
    use mimo_reward::jsonl::{run_code_jsonl, CodeOptions};
    let Some(cfg) = cfg("jsonl") else { return };
    let tests = r#"[{"stdin": "1\n", "stdout": "2\n"}, {"stdin": "5\n", "stdout": "10"}, {"stdin": "-3\n", "stdout": "-6"}]"#;
    let good = serde_json::json!({"code": "print(2*int(input()))", "language": "python", "tests": serde_json::from_str::<serde_json::Value>(tests).unwrap(), "test_levels": [0, 1, 2]});
    let partial = serde_json::json!({"code": "n=int(input())\nprint(2*n if n < 3 else n)", "tests": serde_json::from_str::<serde_json::Value>(tests).unwrap(), "pass_rates": [0.9, 0.5, 0.1], "timeout_s": 2});
    let heval = serde_json::json!({"code": "def f(x):\n    return x + 1\n", "test_program": "assert f(1) == 2\n"});
    let slow =
        serde_json::json!({"code": "while True: pass", "test_program": "pass", "timeout_s": 1});
    let input = format!("{good}\n{partial}\n{heval}\n{{bad\n{slow}\n");
    let mut out = Vec::new();
    let st = run_code_jsonl(
        input.as_bytes(),
        &mut out,
        &CodeOptions {
            sandbox: cfg.clone(),
            ..CodeOptions::default()
        },
    )
    .unwrap();
    let v: Vec<serde_json::Value> = String::from_utf8_lossy(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(v.len(), 5);
    assert_eq!(v[0]["passed"], serde_json::json!([true, true, true]));
    assert_eq!(v[0]["status"], "ok");
    assert_eq!(v[0]["binary"], 1.0);
    assert!((v[0]["strict"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    assert_eq!(v[1]["passed"], serde_json::json!([true, false, true]));
    assert_eq!(v[1]["status"], "wrong_answer");
    assert_eq!(v[1]["binary"], 0.0);
    assert!((v[1]["strict"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
    assert!((v[1]["soft"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(v[2]["passed"], serde_json::json!([true]));
    assert!(v[2].get("strict").is_none());
    assert_eq!(v[3]["line"], 4);
    assert_eq!(v[4]["status"], "timeout");
    assert_eq!(st.lines, 5);
    assert_eq!(st.malformed, 1);
    assert_eq!(st.correct, 2);
    assert_clean(&cfg);
}

/// Descriptors this test process leaked on purpose (no `FD_CLOEXEC`); closed or re-marked on drop so that
/// a failing assertion does not leave them open for the other tests.
struct LeakedFds {
    /// Plain duplicates to close.
    dups: Vec<i32>,
    /// The file's own descriptor, whose close-on-exec flag is restored.
    original: i32,
}

impl Drop for LeakedFds {
    fn drop(&mut self) {
        // SAFETY: plain syscalls on descriptors this test created.
        unsafe {
            for &fd in &self.dups {
                libc::close(fd);
            }
            libc::fcntl(self.original, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// Defect class A: descriptors inherited without `O_CLOEXEC` (as from a launching shell's `7<file`) must
/// not reach the sandboxed program, wherever they sit (low, middle, above the run's `RLIMIT_NOFILE`).
#[test]
fn hostile_inherited_fds() {
    use std::os::fd::AsRawFd;
    let Some(cfg) = cfg("fds") else { return };
    let host = std::env::temp_dir().join(format!(
        "mimo-reward-test-{}-fds-host.txt",
        std::process::id()
    ));
    std::fs::write(&host, b"host secret\n").unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(&host)
        .unwrap();
    let mut pipe = [0i32; 2];
    // SAFETY: plain syscalls; `pipe(2)` (not pipe2) and F_DUPFD create descriptors without FD_CLOEXEC.
    let leaked = unsafe {
        assert_eq!(libc::pipe(pipe.as_mut_ptr()), 0);
        let ffd = file.as_raw_fd();
        assert_eq!(libc::fcntl(ffd, libc::F_SETFD, 0), 0);
        let mut dups = vec![pipe[0], pipe[1]];
        for min in [40, 300] {
            let fd = libc::fcntl(ffd, libc::F_DUPFD, min);
            if fd >= 0 {
                dups.push(fd);
            }
        }
        let fd = libc::fcntl(pipe[1], libc::F_DUPFD, 50);
        if fd >= 0 {
            dups.push(fd);
        }
        // the reader must not block when the (hopefully empty) pipe is checked
        libc::fcntl(
            pipe[0],
            libc::F_SETFL,
            libc::fcntl(pipe[0], libc::F_GETFL) | libc::O_NONBLOCK,
        );
        LeakedFds {
            dups,
            original: ffd,
        }
    };
    let mut probe_fds: Vec<i32> = (3..=64).collect();
    probe_fds.extend(leaked.dups.iter().copied().filter(|&fd| fd > 64));
    probe_fds.push(leaked.original);
    let code = format!(
        "import os\n\
         print('FDS', sorted(int(x) for x in os.listdir('/proc/self/fd')))\n\
         hits = []\n\
         for fd in {probe_fds:?}:\n\
         \x20   try:\n\
         \x20       hits.append(('read', fd, os.read(fd, 100)))\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         \x20   try:\n\
         \x20       os.write(fd, b'pwned\\n')\n\
         \x20       hits.append(('write', fd))\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         print('HITS', hits)\n"
    );
    let r = py(&code, &cfg);
    assert_eq!(r.status, Status::Ok, "{r:?}");
    let fds_line = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("FDS "))
        .unwrap_or_default();
    let listed: Vec<i32> = fds_line
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect();
    // 0, 1, 2 and the descriptor listdir itself opened
    assert!(
        listed.len() <= 4 && listed.iter().all(|&fd| fd <= 3) && listed.starts_with(&[0, 1, 2]),
        "fds visible in the sandbox: {listed:?} ({r:?})"
    );
    assert!(r.stdout.contains("HITS []"), "{}", r.stdout);
    assert_eq!(std::fs::read(&host).unwrap(), b"host secret\n");
    let mut buf = [0u8; 64];
    // SAFETY: reading into a local buffer from the non-blocking pipe this test created.
    let n = unsafe { libc::read(pipe[0], buf.as_mut_ptr().cast(), buf.len()) };
    assert!(
        n <= 0,
        "the sandbox wrote into a host pipe: {:?}",
        &buf[..n as usize]
    );
    drop(leaked);
    let _ = std::fs::remove_file(&host);
    assert_clean(&cfg);
}

/// A uid range that would reach `u32::MAX` (`setresuid`'s "unchanged", i.e. root) or uid 0 is refused
/// before anything runs, by `validate` and by `run_program` itself.
#[test]
fn unusable_uid_range_is_refused() {
    for base in [0, u32::MAX, u32::MAX - 100] {
        let cfg = SandboxConfig {
            uid_base: base,
            ..SandboxConfig::default()
        };
        assert!(cfg.validate().is_err(), "uid_base {base}");
    }
    let cfg = SandboxConfig {
        uid_base: u32::MAX,
        ..SandboxConfig::default()
    };
    let r = py("print('ran')", &cfg);
    assert_eq!(r.status, Status::SandboxError, "{r:?}");
    assert!(!r.stdout.contains("ran"));
}

#[test]
fn config_limits_are_validated() {
    assert!(SandboxConfig::default().validate().is_ok());
    let bad = [
        SandboxConfig {
            concurrency: 0,
            ..SandboxConfig::default()
        },
        SandboxConfig {
            concurrency: 1 << 40,
            ..SandboxConfig::default()
        },
        SandboxConfig {
            timeout: Duration::ZERO,
            ..SandboxConfig::default()
        },
        SandboxConfig {
            timeout: Duration::MAX,
            ..SandboxConfig::default()
        },
        SandboxConfig {
            memory_bytes: u64::MAX,
            ..SandboxConfig::default()
        },
        SandboxConfig {
            max_open_files: 0,
            ..SandboxConfig::default()
        },
        SandboxConfig {
            max_output_bytes: usize::MAX,
            ..SandboxConfig::default()
        },
    ];
    for c in bad {
        assert!(c.validate().is_err(), "{c:?}");
    }
}

/// Defect class B end to end: invalid UTF-8, an 8-TB `test_levels` entry and a huge `timeout_s` are
/// answered in place, and the valid lines around them still run.
#[test]
fn code_jsonl_bad_lines_do_not_stop_the_run() {
    use mimo_reward::jsonl::{run_code_jsonl, CodeOptions};
    let Some(cfg) = cfg("jsonl-bad") else { return };
    let good = r#"{"code": "print(2*int(input()))", "tests": [{"stdin": "2", "stdout": "4"}], "test_levels": [0]}"#;
    let mut input = Vec::new();
    input.extend_from_slice(good.as_bytes());
    input.extend_from_slice(b"\n{\"code\": \"\xc3\x28\"}\n");
    input.extend_from_slice(
        br#"{"code": "print(1)", "tests": [{"stdin": "", "stdout": "1"}], "test_levels": [1000000000000]}"#,
    );
    input.extend_from_slice(b"\n\n");
    input.extend_from_slice(br#"{"code": "print(1)", "test_program": "pass", "timeout_s": 1e300}"#);
    input.push(b'\n');
    input.extend_from_slice(good.as_bytes());
    let mut out = Vec::new();
    let st = run_code_jsonl(
        &input[..],
        &mut out,
        &CodeOptions {
            sandbox: cfg.clone(),
            ..CodeOptions::default()
        },
    )
    .unwrap();
    let v: Vec<serde_json::Value> = String::from_utf8_lossy(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(v.len(), 5);
    for i in [0, 4] {
        assert_eq!(v[i]["passed"], serde_json::json!([true]), "{}", v[i]);
        assert_eq!(v[i]["strict"], 1.0);
    }
    assert_eq!(v[1]["line"], 2);
    assert!(v[1]["error"].as_str().unwrap().contains("invalid UTF-8"));
    assert_eq!(v[2]["line"], 3);
    assert!(v[2]["error"].as_str().unwrap().contains("test_levels"));
    assert_eq!(v[3]["line"], 5);
    assert!(v[3]["error"].as_str().unwrap().contains("timeout_s"));
    assert_eq!((st.lines, st.malformed, st.correct), (5, 3, 2));
    assert_clean(&cfg);
}
