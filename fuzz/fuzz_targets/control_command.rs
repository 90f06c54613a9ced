//! Control-socket commands against a live broker (one file LUN, one emulated LUN behind a
//! port, a thin pool): any line gets a JSON answer, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weir_broker::config::BrokerConfig;
use weir_broker::server::Broker;

fn broker() -> &'static Broker {
    static BROKER: OnceLock<(tempfile::TempDir, Broker)> = OnceLock::new();
    &BROKER
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let pool = dir.path().join("pool");
            std::fs::create_dir_all(&pool).unwrap();
            let q = |p: std::path::PathBuf| format!("{:?}", p.display().to_string());
            let text = format!(
                "[[port]]\nname = \"p\"\nqueue_limit = 64\n\
                 [[pool]]\nname = \"tp\"\ndir = {pool}\ncapacity = \"64MiB\"\n\
                 [[lun]]\nname = \"f\"\npath = {f}\nsize = \"1MiB\"\n\
                 [[lun.paths]]\nname = \"a\"\n[[lun.paths]]\nname = \"b\"\n\
                 [[lun]]\nname = \"e\"\npath = {e}\nsize = \"1MiB\"\nbackend = \"emulated\"\nport = \"p\"\n\
                 [[lun]]\nname = \"t\"\npath = {t}\nsize = \"8MiB\"\npool = \"tp\"\n\
                 [[disk]]\nsocket = {s1}\nlun = \"f\"\n\
                 [[disk]]\nsocket = {s2}\nlun = \"e\"\n\
                 [[disk]]\nsocket = {s3}\nlun = \"t\"\n",
                pool = q(pool.clone()),
                f = q(dir.path().join("f.img")),
                e = q(dir.path().join("e.img")),
                t = q(pool.join("t.img")),
                s1 = q(dir.path().join("f.sock")),
                s2 = q(dir.path().join("e.sock")),
                s3 = q(dir.path().join("t.sock")),
            );
            let config = BrokerConfig::parse(&text).unwrap();
            let broker = Broker::start(&config, true).unwrap();
            (dir, broker)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let reply = broker().control_answer(line);
    // Parsing a full telemetry reply (300 samples) would be most of each run: check the shape
    // always, the syntax when the reply is small (errors and short answers are).
    let shaped = (reply.starts_with('{') && reply.ends_with('}'))
        || (reply.starts_with('[') && reply.ends_with(']'));
    assert!(shaped, "not JSON: {reply}");
    if reply.len() < 16 << 10 {
        assert!(
            serde_json::from_str::<serde_json::Value>(&reply).is_ok(),
            "not JSON: {reply}"
        );
    }
});
