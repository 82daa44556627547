#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferrotun_proto::fuzzing::data_batch(data);
});
