//! Compiles `src/c10d.cpp` against the headers of the libtorch tch links (torch-sys reports its lib dir as
//! `DEP_TCH_LIBTORCH_LIB`; the wheel's `include/` is beside it) and the gloo headers of Debian's
//! `libgloo-dev` (declarations only: the gloo code is the copy inside libtorch_cpu).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/c10d.cpp");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys reports DEP_TCH_LIBTORCH_LIB"),
    );
    let include = lib
        .parent()
        .expect("libtorch lib dir has a parent")
        .join("include");
    if !std::path::Path::new("/usr/include/gloo/context.h").exists() {
        panic!(
            "mimo-dist needs the gloo headers: apt-get install libgloo-dev (tools/test.sh does)"
        );
    }
    cc::Build::new()
        .cpp(true)
        .file("src/c10d.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DUSE_C10D_GLOO")
        .flag("-w")
        .compile("mimo_c10d");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}
