//! Build script: with the `ct2` feature, points the linker at the CTranslate2 library that
//! `scripts/ct2-setup.sh` laid out and gives the binaries and tests an rpath to it.
//!
//! ct2rs 0.10.3 with its `system` feature emits `-lctranslate2` (plus `cpu_features`,
//! `cublas_static`, `cublasLt_static` and `culibos`, which the setup script provides as empty
//! archives) and leaves the search path to the environment. The directory is
//! `$TUBESCRIBE_CT2_LIB`, else `<workspace>/.ct2/lib`. Without the feature this script does
//! nothing.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=TUBESCRIBE_CT2_LIB");
    if std::env::var_os("CARGO_FEATURE_CT2").is_none() {
        return;
    }
    let dir = std::env::var_os("TUBESCRIBE_CT2_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
            manifest.join("../../.ct2/lib")
        });
    let lib = dir.join("libctranslate2.so");
    if !lib.exists() {
        panic!(
            "the `ct2` feature links the PyPI ctranslate2 wheel's library, but {} is missing: \
             run scripts/ct2-setup.sh (or set TUBESCRIBE_CT2_LIB to a directory laid out \
             like it)",
            lib.display()
        );
    }
    let dir = dir
        .canonicalize()
        .expect("canonical CTranslate2 library directory");
    println!("cargo:rerun-if-changed={}", lib.display());
    println!("cargo:rustc-link-search=native={}", dir.display());
    // The wheel's library and its libgomp are found at run time through this absolute rpath
    // (the wheel's own RPATH is `$ORIGIN`, so libgomp beside it is found too).
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    println!("cargo:rustc-env=TUBESCRIBE_CT2_LIB_DIR={}", dir.display());
}
