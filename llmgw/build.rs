//! Builds the XDP program (`llmgw-ebpf`) for `bpfel-unknown-none` with the
//! nightly toolchain, so that `cargo build -p llmgw` produces both halves.
//! `src/l4` embeds the object from `OUT_DIR`. Without the `xdp` feature
//! nothing is built (the L7 half alone, on stable).

#[cfg(not(feature = "xdp"))]
fn main() {}

#[cfg(feature = "xdp")]
fn main() -> anyhow::Result<()> {
    use anyhow::{Context as _, anyhow};

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "llmgw-ebpf")
        .ok_or_else(|| anyhow!("package llmgw-ebpf not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", ebpf.manifest_path))?;
    let toolchain = std::env::var("LLMGW_EBPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".into());
    println!("cargo:rerun-if-env-changed=LLMGW_EBPF_TOOLCHAIN");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}
