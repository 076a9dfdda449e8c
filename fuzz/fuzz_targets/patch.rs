//! Config patches (`--config-patch`, strategic merge and JSON patch) applied to a valid config.
#![no_main]

use std::sync::OnceLock;

fn base() -> &'static basalt_config::Config {
    static BASE: OnceLock<basalt_config::Config> = OnceLock::new();
    BASE.get_or_init(|| {
        basalt_config::Config::parse(
            include_str!("../../config/testdata/valid/network.yaml"),
            basalt_config::Mode::Metal,
        )
        .or_else(|_| {
            basalt_config::Config::parse(
                include_str!("../../config/testdata/valid/worker.yaml"),
                basalt_config::Mode::Metal,
            )
        })
        .expect("a valid base config")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(p) = basalt_config::patch::Patch::parse(text)
    {
        let _ = p.apply(base(), basalt_config::Mode::Metal);
    }
});
