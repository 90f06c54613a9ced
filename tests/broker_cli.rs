//! `weir broker` as a user meets it: bad configs, taken sockets, signals.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

/// `weir broker --config CFG`, to run or spawn.
fn broker(cfg: &std::path::Path) -> Command {
    let mut c = weir();
    c.arg("broker").arg("--config").arg(cfg);
    c
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
    let out = broker(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("disk[0].lun") && err.contains("no LUN named 'b'"),
        "{err}"
    );

    let cfg = write_config(dir.path(), "[[lun]]\nname = \"a\"\npth = \"/tmp/x.img\"\n");
    let out = broker(&cfg).output().unwrap();
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
    let out = broker(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must refuse");
    assert!(
        err.contains("already exists") && err.contains("--replace"),
        "{err}"
    );

    // With --replace it serves, and SIGTERM stops it cleanly, removing the socket.
    let mut child = broker(&cfg)
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

/// One raw HTTP exchange with the metrics listener: the status line.
fn http_status(port: u16, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.lines().next().unwrap_or("").to_string()
}

#[test]
fn metrics_listen_serves_metrics_and_refuses_the_rest_and_a_bad_address_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let lun_and_disk = format!(
        "[[lun]]\nname = \"a\"\npath = {:?}\nsize = \"1MiB\"\n[[disk]]\nsocket = {:?}\nlun = \"a\"\n",
        dir.path().join("a.img").display().to_string(),
        dir.path().join("a.sock").display().to_string()
    );
    let cfg = write_config(
        dir.path(),
        &format!("metrics_listen = \"localhost:9464\"\n{lun_and_disk}"),
    );
    let out = broker(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("metrics_listen") && err.contains("127.0.0.1:9464"),
        "{err}"
    );

    // Port 0: the broker takes any free port and says which. (Binding a probe socket to find a
    // free port and handing the number over raced with the other tests' listeners.)
    let cfg = write_config(
        dir.path(),
        &format!("metrics_listen = \"127.0.0.1:0\"\n{lun_and_disk}"),
    );
    let mut child = broker(&cfg)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let mut said = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        said.push(line.clone());
        if line.contains("weir broker ready") {
            break;
        }
    }
    let port: u16 = said
        .iter()
        .find_map(|l| {
            l.strip_prefix("metrics http://127.0.0.1:")?
                .strip_suffix("/metrics")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("the broker says where it serves metrics: {said:?}"));
    assert_ne!(port, 0, "{said:?}");
    let get = |target: &str| {
        http_status(
            port,
            format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
    };
    assert_eq!(get("/metrics"), "HTTP/1.1 200 OK");
    assert_eq!(get("/"), "HTTP/1.1 200 OK");
    assert_eq!(get("/nope"), "HTTP/1.1 404 Not Found");
    assert_eq!(
        http_status(port, b"POST /metrics HTTP/1.1\r\n\r\n"),
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert_eq!(
        http_status(port, b"\x16\x03\x01garbage\r\n\r\n"),
        "HTTP/1.1 400 Bad Request"
    );
    assert_eq!(
        http_status(port, &vec![b'A'; 20000]),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // A client that connects and says nothing costs the next scrape at most the timeout.
    let _silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(get("/metrics"), "HTTP/1.1 200 OK");
    // SAFETY: kill(2) on our own child; no memory involved.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
}

/// Starts `weir broker` on `cfg` and waits for it to say it is ready.
fn start_ready(cfg: &std::path::Path) -> std::process::Child {
    let mut child = broker(cfg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(out));
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("weir broker ready"))),
        "the broker never became ready"
    );
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

#[test]
fn the_control_socket_is_its_owners_and_an_image_has_one_broker() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("broker.ctl");
    let image = dir.path().join("a.img");
    let cfg_text = |sock: &str, ctl: &std::path::Path| {
        format!(
            "control_socket = {:?}\n[[lun]]\nname = \"a\"\npath = {:?}\nsize = \"1MiB\"\n\
             [[disk]]\nsocket = {:?}\nlun = \"a\"\n",
            ctl.display().to_string(),
            image.display().to_string(),
            dir.path().join(sock).display().to_string()
        )
    };
    let cfg = write_config(dir.path(), &cfg_text("a.sock", &control));
    let mut first = start_ready(&cfg);
    // The broker runs under its seccomp filter (broker/src/sandbox.rs).
    let status = std::fs::read_to_string(format!("/proc/{}/status", first.id())).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["Seccomp:", "2"])),
        "no seccomp filter: {status}"
    );

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&control).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket mode {mode:o}");

    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        // Another user who gets past the file mode (opened up on purpose here) is refused by
        // its credentials.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o666)).unwrap();
        // The refusal comes unasked, and the broker may close before the command is sent.
        let client = "import socket,sys\n\
                      s=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n\
                      try:\n s.sendall(b'stats\\n')\nexcept OSError:\n pass\n\
                      print(s.makefile().readline())";
        let out = std::os::unix::process::CommandExt::uid(&mut Command::new("python3"), 65534)
            .args(["-c", client])
            .arg(&control)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("uid 65534 may not use"),
            "{said} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let reply = weir_broker::control::query(&control, "stats").unwrap();
    assert!(reply.is_array(), "{reply}");

    // A second broker on the same image is refused, naming the image and why.
    let cfg2 = dir.path().join("second.toml");
    std::fs::write(&cfg2, cfg_text("b.sock", &dir.path().join("b.ctl"))).unwrap();
    let out = broker(&cfg2).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("in use by another process"),
        "{err}"
    );
    let _ = first.kill();
    let _ = first.wait();
}
