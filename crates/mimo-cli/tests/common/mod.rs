//! Shared helpers of the CLI tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A `mimo serve` child, killed when dropped.
pub struct Serve(pub Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `mimo serve --model MODEL --port 0 EXTRA…` and waits for it to listen; returns the child and its
/// `host:port`. Its stderr keeps being drained.
pub fn spawn_serve(model: &Path, extra: &[&str]) -> (Serve, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mimo"))
        .args([
            "serve",
            "--model",
            &model.display().to_string(),
            "--port",
            "0",
        ])
        .args(extra)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("serve exited before listening")
            .unwrap();
        if let Some(a) = line.split("listening on http://").nth(1) {
            break a.trim().to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (Serve(child), addr)
}
