//! What `weir run` reads back from guests: the probe's serial report, fio's JSON, the serial
//! log's markers. A guest (or a broken fio) writes anything; the parsers answer or refuse.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = weir_lab::probe::ProbeReport::from_serial(&text);
    let _ = weir_lab::fio::FioReport::parse(&text);
    let _ = weir_lab::serial::GuestTranscript::parse(&text);
});
