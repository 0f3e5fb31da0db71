#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cowfs_fuzz::posix_acl(data));
