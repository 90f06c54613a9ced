//! How tests that need the real machine (QEMU, /dev/kvm, the guest image) decide to run.
//!
//! Locally such a test may be skipped, with a line saying why. In CI `WEIR_REQUIRE_KVM=1` is
//! set and a test that cannot run fails instead: a skipped core test must never pass silently.

/// True when the environment demands that every machine test runs.
pub fn required() -> bool {
    matches!(
        std::env::var("WEIR_REQUIRE_KVM").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// Call at the top of a machine test with the reason it cannot run (or `None`). Returns true
/// when the test should go on; panics when it cannot and [`required`] is set.
pub fn can_run(test: &str, missing: Option<String>) -> bool {
    match missing {
        None => true,
        Some(why) if required() => {
            panic!("{test} cannot run and WEIR_REQUIRE_KVM=1 forbids skipping it: {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why} (set WEIR_REQUIRE_KVM=1 to make this a failure)");
            false
        }
    }
}

/// Why QEMU cannot be used here, if it cannot.
pub fn qemu_missing() -> Option<String> {
    let ok = std::process::Command::new(crate::qemu::QEMU_BINARY)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    (!ok).then(|| {
        format!(
            "{} not found (scripts/install-deps.sh)",
            crate::qemu::QEMU_BINARY
        )
    })
}
