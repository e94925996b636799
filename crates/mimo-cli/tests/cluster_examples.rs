//! The cluster examples (examples/cluster) run locally: the data stages' tasks as separate concurrent
//! processes through `data-task.sh`, indexed the Slurm way (`SLURM_ARRAY_TASK_ID`), the Kubernetes way
//! (`JOB_COMPLETION_INDEX`) and by hand (`TASK_INDEX`), give the same shards as one task.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `data-task.sh ARGS` as task `i` of `n` under scheduler style `i % 3`.
fn task(i: usize, n: usize, args: &[String]) -> std::process::Child {
    let mut c = Command::new("bash");
    c.arg(root().join("examples/cluster/data-task.sh"))
        .args(args)
        .env("MIMO_BIN", env!("CARGO_BIN_EXE_mimo"));
    for k in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_COUNT",
        "JOB_COMPLETION_INDEX",
    ] {
        c.env_remove(k);
    }
    match i % 3 {
        0 => c
            .env("SLURM_ARRAY_TASK_ID", (i + 10).to_string())
            .env("SLURM_ARRAY_TASK_MIN", "10")
            .env("SLURM_ARRAY_TASK_COUNT", n.to_string()),
        1 => c
            .env("JOB_COMPLETION_INDEX", i.to_string())
            .env("NUM_TASKS", n.to_string()),
        _ => c
            .env("TASK_INDEX", i.to_string())
            .env("NUM_TASKS", n.to_string()),
    };
    c.spawn().unwrap()
}

/// One stage: `n` tasks at once, all must succeed.
fn stage(n: usize, args: &[String]) {
    let kids: Vec<_> = (0..n).map(|i| task(i, n, args)).collect();
    for (i, mut k) in kids.into_iter().enumerate() {
        assert!(k.wait().unwrap().success(), "task {i} of {n}: {args:?}");
    }
}

/// extract → dedup (signatures, buckets, cluster, filter) over the HTML fixtures into `work`.
fn pipeline(work: &Path, n: usize) {
    let s = |p: &Path| p.display().to_string();
    let mut extract = vec!["extract".to_string()];
    for f in std::fs::read_dir(root().join("fixtures/data/html")).unwrap() {
        extract.extend(["--input".into(), s(&f.unwrap().path())]);
    }
    extract.extend(["--output".into(), s(&work.join("text"))]);
    stage(n, &extract);
    for st in ["signatures", "buckets", "cluster", "filter"] {
        let args: Vec<String> = [
            "dedup",
            "--input",
            &format!("{}/*.jsonl", work.join("text").display()),
            "--work-dir",
            &s(&work.join("dedup-work")),
            "--output",
            &s(&work.join("dedup")),
            "--stage",
            st,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        stage(n, &args);
    }
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn data_stages_as_separate_task_processes_equal_one_task() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, three) = (tmp.path().join("one"), tmp.path().join("three"));
    pipeline(&one, 1);
    pipeline(&three, 3);
    for sub in ["text", "dedup"] {
        let (a, b) = (files(&one.join(sub)), files(&three.join(sub)));
        assert!(!a.is_empty(), "{sub}: no shards");
        assert_eq!(a, b, "{sub}: 3 tasks differ from 1");
    }
    // A relaunched task finds its shards done and exits 0 without work.
    let again = Command::new("bash")
        .arg(root().join("examples/cluster/data-task.sh"))
        .args([
            "extract",
            "--input",
            &format!("{}/*.jsonl", one.join("text").display()),
        ])
        .args(["--output", &tmp.path().join("x").display().to_string()])
        .env("MIMO_BIN", env!("CARGO_BIN_EXE_mimo"))
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("TASK_INDEX")
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(2),
        "no task index is a usage error"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("no task index"));
}
