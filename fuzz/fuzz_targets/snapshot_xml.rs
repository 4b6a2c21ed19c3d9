#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virtpulse::fuzzing::snapshot_xml(data));
