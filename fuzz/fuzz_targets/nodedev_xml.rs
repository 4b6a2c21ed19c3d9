#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virtpulse::fuzzing::nodedev_xml(data));
