//! The config reader, decoder and validation: any bytes, as `apply-config` or a config URL
//! would bring them. An error is fine; a panic, an abort or a hang is not.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for mode in [basalt_config::Mode::Metal, basalt_config::Mode::Container] {
            if let Ok(c) = basalt_config::Config::parse(text, mode) {
                // What is accepted writes back out and reads again.
                let again = basalt_config::Config::parse(&c.to_yaml(), mode);
                assert!(
                    again.is_ok(),
                    "a config that parsed does not parse after to_yaml"
                );
            }
        }
    }
});
