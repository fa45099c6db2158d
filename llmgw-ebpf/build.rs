//! The eBPF crate links with `bpf-linker`, an undeclared dependency: rebuild
//! when the binary changes, and fail early with a useful message when it is
//! missing (`cargo xtask setup` installs it).

fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => {
            // Only the BPF target needs the linker; host builds of this crate
            // (clippy, build-dependency) compile an empty `main`.
            if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
                panic!("bpf-linker not found in PATH: run `cargo xtask setup`");
            }
        }
    }
}
