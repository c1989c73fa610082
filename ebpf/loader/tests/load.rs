//! Loads the real kernel programs into this kernel (root only): the verifier accepts them,
//! they attach to a fresh cgroup, their pins are reused by a second load, and uninstall
//! removes every pin.

use std::{fs, net::SocketAddrV4, path::PathBuf};

use myelin_ebpf_loader::{cgroup_id, pin_dir, uninstall, Dataplane, InstallOptions, CFG_CAPTURE};

fn cgroup2_mount() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    for line in info.lines() {
        let (left, right) = line.split_once(" - ").expect("mountinfo line");
        if right.split_whitespace().next() == Some("cgroup2") {
            return PathBuf::from(left.split_whitespace().nth(4).expect("mount point"));
        }
    }
    panic!("no cgroup2 mount");
}

fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && std::env::var("CI").as_deref() == Ok("true") {
        panic!("this test needs root, and CI must run it");
    }
    root
}

struct CgroupDir(PathBuf);
impl Drop for CgroupDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

#[test]
fn load_attach_reuse_and_uninstall() {
    if !privileged() {
        eprintln!("skipping: not root");
        return;
    }
    let instance = format!("loadtest-{}", std::process::id());
    let cg = CgroupDir(cgroup2_mount().join(&instance));
    fs::create_dir_all(&cg.0).unwrap();
    let opts = InstallOptions {
        instance: instance.clone(),
        cgroup: cg.0.clone(),
    };

    let result = std::panic::catch_unwind(|| {
        let mut dp = Dataplane::install(&opts).expect("install");
        assert!(!dp.reused_pins);
        let capture: SocketAddrV4 = "10.77.0.1:15001".parse().unwrap();
        dp.set_config(capture, cgroup_id(&opts.cgroup).unwrap(), CFG_CAPTURE)
            .unwrap();
        assert_eq!(dp.config_flags(), CFG_CAPTURE);
        dp.enroll(12345, 0).unwrap();
        dp.add_local_pod("10.77.1.2".parse().unwrap(), 0).unwrap();
        dp.unenroll(12345).unwrap();
        dp.unenroll(12345).unwrap(); // idempotent
        dp.set_exclusions(&[22, 53], &[("169.254.0.0".parse().unwrap(), 16)])
            .unwrap();
        assert_eq!(dp.counters().read().connects_captured, 0);
        assert!(pin_dir(&instance).join("links/connect4").exists());
        assert!(pin_dir(&instance).join("links/sockops").exists());
        assert!(pin_dir(&instance).join("links/ingress").exists());
        dp.set_node_addrs(&["10.77.0.1".parse().unwrap()]).unwrap();
        assert!(dp.plaintext().read().is_empty());
        drop(dp);

        // A restarted agent finds and reuses the pinned maps, config included.
        let dp = Dataplane::install(&opts).expect("second install");
        assert!(dp.reused_pins);
        assert_eq!(dp.config_flags(), CFG_CAPTURE);
        drop(dp);
    });
    let removed = uninstall(&instance).expect("uninstall");
    assert!(removed);
    assert!(!pin_dir(&instance).exists());
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
