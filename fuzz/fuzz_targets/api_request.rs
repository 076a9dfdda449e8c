//! Requests as init decodes them from apid (protobuf), and an `ApplyConfiguration`'s data as
//! init reads it in maintenance mode, from anyone on the network.
#![no_main]

use basalt_api::machine as pb;
use prost::Message as _;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = pb::VersionRequest::decode(data);
    let _ = pb::DisksRequest::decode(data);
    let _ = pb::GetRequest::decode(data);
    let _ = pb::LogsRequest::decode(data);
    let _ = pb::ImageImportRequest::decode(data);
    let _ = pb::UpgradeRequest::decode(data);
    if let Ok(r) = pb::ApplyConfigurationRequest::decode(data)
        && let Ok(text) = std::str::from_utf8(&r.data)
    {
        let _ = basalt_config::Config::parse(text, basalt_config::Mode::Metal);
    }
});
