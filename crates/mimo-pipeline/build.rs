//! Embeds an rpath to libtorch's lib dir in this crate's tests, examples and benches, so they run without
//! `LD_LIBRARY_PATH`. torch-sys (`links = "tch"`) reports that dir as `DEP_TCH_LIBTORCH_LIB`.
//! A binary in another crate that enables the `tch` feature needs the same link arg in its own build.rs.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
