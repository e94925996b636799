//! When libtorch is linked in (the `train` feature, or feature unification in a workspace build), embed an
//! rpath to the torch wheel's lib dir so that `mimo` runs without LD_LIBRARY_PATH. torch-sys finds libtorch
//! through Python when LIBTORCH_USE_PYTORCH is set; we ask the same Python. Harmless when unused.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let dir = if let Ok(root) = std::env::var("LIBTORCH") {
        Some(format!("{root}/lib"))
    } else if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        Command::new("python")
            .args([
                "-c",
                "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        None
    };
    if let Some(dir) = dir {
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{dir}");
    }
}
