//! Arbitrary vhost-user message streams against a live broker's disk socket: weir's own
//! control plane (`broker/src/vhost_session.rs`, through the vhost crate's message framing)
//! must answer or refuse every message, never panic, and end the session when the frontend
//! hangs up — a session that does not end within 5 s is a stuck disk, and fails the run.
//! (Messages that carry file descriptors arrive here without them: those paths are checked
//! by the real frontends in the broker tests.)
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use weir_broker::config::BrokerConfig;
use weir_broker::server::Broker;

fn socket() -> &'static PathBuf {
    static BROKER: OnceLock<(tempfile::TempDir, Broker, PathBuf)> = OnceLock::new();
    &BROKER
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let q = |p: &std::path::Path| format!("{:?}", p.display().to_string());
            let sock = dir.path().join("d.sock");
            let text = format!(
                "[[lun]]\nname = \"f\"\npath = {}\nsize = \"1MiB\"\n\
                 [[disk]]\nsocket = {}\nlun = \"f\"\n",
                q(&dir.path().join("f.img")),
                q(&sock),
            );
            let config = BrokerConfig::parse(&text).unwrap();
            let broker = Broker::start(&config, true).unwrap();
            (dir, broker, sock)
        })
        .2
}

fuzz_target!(|data: &[u8]| {
    let path = socket();
    // The disk serves one frontend at a time: the previous input's session may still be
    // winding down.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stream = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "the disk socket refused us: {e}");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // The broker may hang up mid-stream (a message it cannot frame ends the session).
    let _ = stream.write_all(data);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("the broker did not end a session whose frontend hung up");
            }
            Err(_) => break,
        }
    }
});
