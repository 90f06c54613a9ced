//! `weir broker` as a user meets it: bad configs, taken sockets, signals.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

fn write_config(dir: &std::path::Path, text: &str) -> PathBuf {
    let p = dir.join("broker.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_bad_config_names_the_field_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[[lun]]\nname = \"a\"\npath = \"/tmp/x.img\"\n[[disk]]\nsocket = \"/tmp/s.sock\"\nlun = \"b\"\n",
    );
    let out = weir()
        .arg("broker")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("disk[0].lun") && err.contains("no LUN named 'b'"),
        "{err}"
    );

    let cfg = write_config(dir.path(), "[[lun]]\nname = \"a\"\npth = \"/tmp/x.img\"\n");
    let out = weir()
        .arg("broker")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown field `pth`"),
        "{err}"
    );
}

#[test]
fn an_existing_socket_is_refused_unless_replace() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("taken.sock");
    std::fs::write(&sock, b"").unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[[lun]]\nname = \"a\"\npath = {:?}\nsize = \"1MiB\"\n[[disk]]\nsocket = {:?}\nlun = \"a\"\n",
            dir.path().join("a.img").display().to_string(),
            sock.display().to_string()
        ),
    );
    let out = weir()
        .arg("broker")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must refuse");
    assert!(
        err.contains("already exists") && err.contains("--replace"),
        "{err}"
    );

    // With --replace it serves, and SIGTERM stops it cleanly, removing the socket.
    let mut child = weir()
        .arg("broker")
        .arg("--config")
        .arg(&cfg)
        .arg("--replace")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "broker never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on the child this test started.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!sock.exists());
}
