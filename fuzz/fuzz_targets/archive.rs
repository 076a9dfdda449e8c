//! `osctl image import`'s archive as init reads it (a tar of an OCI layout or `docker save`):
//! the bounded tar reader, then the index and manifests it names.
#![no_main]

use basalt_containerd::archive;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        if let Ok(c) = archive::read(data, &mut archive::Skip).await {
            let _ = archive::images(&c);
        }
    });
});
