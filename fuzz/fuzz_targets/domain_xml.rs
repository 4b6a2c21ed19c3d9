#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virtpulse::fuzzing::domain_xml(data));
