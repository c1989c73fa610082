//! Link flags for the agent binary only.
//!
//! `max-page-size` 2 MiB makes every load segment 2 MiB-aligned, which the kernel honours
//! when it picks the executable's load address, and `separate-code` starts the executable
//! segment on such a boundary in the file and in memory. Together they put the whole of the
//! agent's code, its hottest functions first (PGO places them at the start of `.text`),
//! inside the 2 MiB windows that `hugetext` moves onto huge pages; without them the
//! segment starts anywhere in a 2 MiB page and its first part stays on 4 KiB pages.
fn main() {
    println!("cargo:rustc-link-arg-bin=myelin=-Wl,-z,max-page-size=0x200000");
    println!("cargo:rustc-link-arg-bin=myelin=-Wl,-z,separate-code");
}
