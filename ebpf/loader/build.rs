//! Builds the kernel programs (`ebpf/programs`) for `bpfel-unknown-none` with the nightly
//! toolchain and `bpf-linker`, always in release mode, and leaves the object in OUT_DIR.
fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../programs");
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../common")
    );
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "myelin-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
