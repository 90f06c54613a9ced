//! The broker config: any text is a config or an error naming the field, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = weir_broker::config::BrokerConfig::parse(text);
    }
});
