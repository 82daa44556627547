//! The data path allocates nothing: a counting global allocator (its own test binary, as
//! the global allocator is per binary) watches seal, open, the session's encapsulate and
//! decapsulate, compression, decompression and the TCP decoder.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ferrotun_proto::handshake::Phase1;
use ferrotun_proto::tcp::encode_prefix;
use ferrotun_proto::{
    AeadBackend, Compressor, Decapsulated, Encapsulated, Entropy, Identity, Keypair, PayloadFlags,
    PrivateKey, SeededEntropy, Session, SessionConfig, SessionIndex, StreamDecoder, Transmit,
    decompress,
};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every method forwards to `System` unchanged; the counter is a const-initialized
// thread-local `Cell` whose access never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations<R>(f: impl FnOnce() -> R) -> (u64, R) {
    let before = ALLOCS.with(Cell::get);
    let r = f();
    (ALLOCS.with(Cell::get) - before, r)
}

fn ipv4(buf: &mut [u8], len: usize) {
    buf[0] = 0x45;
    buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
}

#[test]
fn the_counter_works() {
    let (n, v) = allocations(|| vec![1u8; 10]);
    assert_eq!((n, v.len()), (1, 10));
}

#[test]
fn seal_and_open_allocate_nothing() {
    let now = Instant::now();
    for backend in AeadBackend::ALL {
        let a = Keypair::new(backend, &[1; 32], &[2; 32], 1, 2, now, true);
        let b = Keypair::new(backend, &[2; 32], &[1; 32], 2, 1, now, false);
        let mut buf = vec![0u8; 16 + 65536 + 16];
        for len in [0usize, 64, 1420, 65535] {
            let (n, ()) = allocations(|| {
                for _ in 0..100 {
                    ipv4(&mut buf[16..], len.max(20));
                    let m = a.seal(PayloadFlags::NONE, len, &mut buf, 65535).unwrap();
                    b.open(&mut buf[..m]).unwrap();
                    let m = a
                        .seal(PayloadFlags::COMPRESSED, len, &mut buf, 1420)
                        .unwrap();
                    b.open(&mut buf[..m]).unwrap();
                }
            });
            assert_eq!(n, 0, "{backend:?} at {len} bytes allocated {n} times");
        }
    }
}

#[test]
fn session_data_path_allocates_nothing() {
    let mut rng = SeededEntropy::new(5);
    let ida = Arc::new(Identity::new(PrivateKey::generate(&mut rng).unwrap()));
    let idb = Arc::new(Identity::new(PrivateKey::generate(&mut rng).unwrap()));
    let mut a = Session::new(
        ida.clone(),
        idb.public_key(),
        None,
        SessionIndex::new(1).unwrap(),
        SessionConfig::default(),
    )
    .unwrap();
    let mut b = Session::new(
        idb.clone(),
        ida.public_key(),
        None,
        SessionIndex::new(2).unwrap(),
        SessionConfig::default(),
    )
    .unwrap();
    let now = Instant::now();
    let wall = SystemTime::now();
    let mut buf = vec![0u8; 2048];
    // Handshake (allocations allowed here).
    assert_eq!(
        a.encapsulate(now, PayloadFlags::NONE, 40, &mut buf, 1420)
            .unwrap(),
        Encapsulated::Queue
    );
    let Some(Transmit::Initiation(n)) = a.poll_transmit(now, wall, &mut rng, &mut buf).unwrap()
    else {
        panic!()
    };
    let Phase1::Pending(p) = idb
        .begin_initiation(&buf[..n], &[1], false, now, &mut rng, &mut [0; 64])
        .unwrap()
    else {
        panic!()
    };
    let mut resp = [0u8; 92];
    b.accept_initiation(p, now, &mut rng, &mut resp).unwrap();
    a.on_response(&resp, &[1], false, now, &mut rng, &mut [0; 64])
        .unwrap();
    assert_eq!(
        a.poll_transmit(now, wall, &mut rng, &mut buf).unwrap(),
        Some(Transmit::FlushQueue)
    );

    let (count, ()) = allocations(|| {
        for i in 0..1000u32 {
            let t = now + Duration::from_millis(u64::from(i));
            ipv4(&mut buf[16..], 100);
            let Encapsulated::Send(m) = a
                .encapsulate(t, PayloadFlags::NONE, 100, &mut buf, 1420)
                .unwrap()
            else {
                panic!()
            };
            let Decapsulated::Data { range, .. } = b.decapsulate(t, &mut buf[..m]).unwrap() else {
                panic!()
            };
            assert_eq!(range.len(), 100);
            while a
                .poll_transmit(t, wall, &mut rng, &mut buf)
                .unwrap()
                .is_some()
            {}
            while b
                .poll_transmit(t, wall, &mut rng, &mut buf)
                .unwrap()
                .is_some()
            {}
        }
    });
    assert_eq!(count, 0, "the session data path allocated {count} times");
}

#[test]
fn compression_and_tcp_decoding_allocate_nothing() {
    let mut c = Compressor::new();
    let text: Vec<u8> = b"GET /index.html HTTP/1.1\r\nHost: example.invalid\r\n\r\n"
        .iter()
        .copied()
        .cycle()
        .take(1420)
        .collect();
    let mut noise = vec![0u8; 1420];
    SeededEntropy::new(1).fill(&mut noise).unwrap();
    let mut dst = vec![0u8; ferrotun_proto::compress::compress_bound(1420)];
    let mut out = vec![0u8; 1420];
    let mut dec = StreamDecoder::new(1500);
    let mut frame = vec![0u8; 2 + 1452];
    encode_prefix(&mut frame, 1452).unwrap();
    let (n, ()) = allocations(|| {
        for _ in 0..100 {
            let k = c.compress(&text, &mut dst).unwrap();
            assert_eq!(decompress(&dst[..k], &mut out).unwrap(), 1420);
            let _ = c.compress(&noise, &mut dst);
            for chunk in frame.chunks(500) {
                dec.push(chunk);
                while let Some(f) = dec.next_frame().unwrap() {
                    assert_eq!(f.len(), 1452);
                }
            }
        }
    });
    assert_eq!(n, 0, "compression or TCP decoding allocated {n} times");
}
