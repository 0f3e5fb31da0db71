#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cowfs_fuzz::blank_device(data));
