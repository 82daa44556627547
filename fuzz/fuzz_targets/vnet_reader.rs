#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferrotun_device::fuzzing::vnet_reader(data);
});
