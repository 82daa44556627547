//! ChaCha20 (RFC 8439 §2.3–2.4) sixteen blocks at a time on AVX-512F, eight or four at a
//! time for short messages and tails.
//!
//! Responsible for XORing the keystream into a buffer from a given block counter on, and
//! for handing out block 0's first 32 bytes (the Poly1305 one-time key) from the same pass.
//! The state is kept "vertically": register `x[j]` holds word `j` of sixteen consecutive
//! blocks, one block per 32-bit lane, so a round is plain lane-wise adds, XORs and
//! rotations (`vprold`) with no shuffles; a 16×16 word transposition at the end turns the
//! lanes back into sixteen 64-byte blocks. Not responsible for checking lengths: callers
//! keep messages under 2^32 blocks so the 32-bit counter cannot wrap.

use std::arch::x86_64::*;

/// "expand 32-byte k" (RFC 8439 §2.3).
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// One quarter round (RFC 8439 §2.1) on four registers of `x`, with the given vector ops.
macro_rules! quarter {
    ($add:ident, $xor:ident, $rol:ident, $x:ident, $a:expr, $b:expr, $c:expr, $d:expr) => {
        $x[$a] = $add($x[$a], $x[$b]);
        $x[$d] = $rol::<16>($xor($x[$d], $x[$a]));
        $x[$c] = $add($x[$c], $x[$d]);
        $x[$b] = $rol::<12>($xor($x[$b], $x[$c]));
        $x[$a] = $add($x[$a], $x[$b]);
        $x[$d] = $rol::<8>($xor($x[$d], $x[$a]));
        $x[$c] = $add($x[$c], $x[$d]);
        $x[$b] = $rol::<7>($xor($x[$b], $x[$c]));
    };
}

/// Twenty rounds: ten column-and-diagonal double rounds (RFC 8439 §2.3), then the input
/// state added back.
macro_rules! twenty_rounds {
    ($add:ident, $xor:ident, $rol:ident, $init:ident) => {{
        let mut x = $init;
        for _ in 0..10 {
            quarter!($add, $xor, $rol, x, 0, 4, 8, 12);
            quarter!($add, $xor, $rol, x, 1, 5, 9, 13);
            quarter!($add, $xor, $rol, x, 2, 6, 10, 14);
            quarter!($add, $xor, $rol, x, 3, 7, 11, 15);
            quarter!($add, $xor, $rol, x, 0, 5, 10, 15);
            quarter!($add, $xor, $rol, x, 1, 6, 11, 12);
            quarter!($add, $xor, $rol, x, 2, 7, 8, 13);
            quarter!($add, $xor, $rol, x, 3, 4, 9, 14);
        }
        for (w, i) in x.iter_mut().zip($init) {
            *w = $add(*w, i);
        }
        x
    }};
}

/// The constant, key and nonce words of the state; word 12 (the counter) varies per lane.
fn state_words(key: &[u32; 8], nonce: &[u8; 12]) -> [u32; 16] {
    let mut s = [0u32; 16];
    s[..4].copy_from_slice(&SIGMA);
    s[4..12].copy_from_slice(key);
    s[13..].copy_from_slice(&nonce_words(nonce));
    s
}

/// Blocks `counter .. counter + 16`, each as one 64-byte register in byte order.
#[target_feature(enable = "avx512f")]
fn blocks16(words: &[u32; 16], counter: u32) -> [__m512i; 16] {
    let mut init = [_mm512_setzero_si512(); 16];
    for (v, &w) in init.iter_mut().zip(words) {
        *v = _mm512_set1_epi32(w as i32);
    }
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    init[12] = _mm512_add_epi32(_mm512_set1_epi32(counter as i32), lanes);
    lanes16(init)
}

/// Sixteen blocks from sixteen initial states held vertically (`init[j]` holds word `j`
/// of every lane's state), each as one 64-byte register in byte order.
#[target_feature(enable = "avx512f")]
fn lanes16(init: [__m512i; 16]) -> [__m512i; 16] {
    let x = twenty_rounds!(_mm512_add_epi32, _mm512_xor_si512, _mm512_rol_epi32, init);

    // Transpose 16×16 words. Within each 128-bit lane k, words 4g..4g+3 of blocks
    // 4k..4k+3 become rows `u[g][i]` (block 4k+i) after two unpack stages; then a 4×4
    // transposition of 128-bit lanes gathers block 4k+i's four rows into one register.
    let mut u = [[_mm512_setzero_si512(); 4]; 4];
    for (g, row) in u.iter_mut().enumerate() {
        let [a, b, c, d] = [x[4 * g], x[4 * g + 1], x[4 * g + 2], x[4 * g + 3]];
        let t0 = _mm512_unpacklo_epi32(a, b);
        let t1 = _mm512_unpackhi_epi32(a, b);
        let t2 = _mm512_unpacklo_epi32(c, d);
        let t3 = _mm512_unpackhi_epi32(c, d);
        *row = [
            _mm512_unpacklo_epi64(t0, t2),
            _mm512_unpackhi_epi64(t0, t2),
            _mm512_unpacklo_epi64(t1, t3),
            _mm512_unpackhi_epi64(t1, t3),
        ];
    }
    let mut out = [_mm512_setzero_si512(); 16];
    for i in 0..4 {
        let a = _mm512_shuffle_i32x4::<0x44>(u[0][i], u[1][i]);
        let b = _mm512_shuffle_i32x4::<0xee>(u[0][i], u[1][i]);
        let c = _mm512_shuffle_i32x4::<0x44>(u[2][i], u[3][i]);
        let d = _mm512_shuffle_i32x4::<0xee>(u[2][i], u[3][i]);
        out[i] = _mm512_shuffle_i32x4::<0x88>(a, c);
        out[4 + i] = _mm512_shuffle_i32x4::<0xdd>(a, c);
        out[8 + i] = _mm512_shuffle_i32x4::<0x88>(b, d);
        out[12 + i] = _mm512_shuffle_i32x4::<0xdd>(b, d);
    }
    out
}

/// Blocks `counter .. counter + 8`, each as one 64-byte register in byte order (computed
/// in 256-bit registers, eight lanes wide).
#[target_feature(enable = "avx512f,avx512vl")]
fn blocks8(words: &[u32; 16], counter: u32) -> [__m512i; 8] {
    let mut init = [_mm256_setzero_si256(); 16];
    for (v, &w) in init.iter_mut().zip(words) {
        *v = _mm256_set1_epi32(w as i32);
    }
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    init[12] = _mm256_add_epi32(_mm256_set1_epi32(counter as i32), lanes);
    lanes8(init)
}

/// Eight blocks from eight initial states held vertically in 256-bit registers (`init[j]`
/// holds word `j` of every lane's state), each as one 64-byte register in byte order.
#[target_feature(enable = "avx512f,avx512vl")]
fn lanes8(init: [__m256i; 16]) -> [__m512i; 8] {
    let x = twenty_rounds!(_mm256_add_epi32, _mm256_xor_si256, _mm256_rol_epi32, init);

    // As in `blocks16`, with two 128-bit lanes: block 4k+i is rows u[0..4][i], lane k.
    let mut u = [[_mm256_setzero_si256(); 4]; 4];
    for (g, row) in u.iter_mut().enumerate() {
        let [a, b, c, d] = [x[4 * g], x[4 * g + 1], x[4 * g + 2], x[4 * g + 3]];
        let t0 = _mm256_unpacklo_epi32(a, b);
        let t1 = _mm256_unpackhi_epi32(a, b);
        let t2 = _mm256_unpacklo_epi32(c, d);
        let t3 = _mm256_unpackhi_epi32(c, d);
        *row = [
            _mm256_unpacklo_epi64(t0, t2),
            _mm256_unpackhi_epi64(t0, t2),
            _mm256_unpacklo_epi64(t1, t3),
            _mm256_unpackhi_epi64(t1, t3),
        ];
    }
    // Halves: bytes 0..32 of a block are rows 0 and 1, bytes 32..64 rows 2 and 3.
    let join = |lo: __m256i, hi: __m256i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
    let mut out = [_mm512_setzero_si512(); 8];
    for i in 0..4 {
        out[i] = join(
            _mm256_permute2x128_si256::<0x20>(u[0][i], u[1][i]),
            _mm256_permute2x128_si256::<0x20>(u[2][i], u[3][i]),
        );
        out[4 + i] = join(
            _mm256_permute2x128_si256::<0x31>(u[0][i], u[1][i]),
            _mm256_permute2x128_si256::<0x31>(u[2][i], u[3][i]),
        );
    }
    out
}

/// Blocks `counter .. counter + 4`, each as one 64-byte register in byte order. Here the
/// state is kept "horizontally", one block per 128-bit lane and one row of the state per
/// register, with word rotations between column and diagonal rounds: a quarter of
/// [`blocks16`]'s work, for messages of at most three blocks, whose latency it sets.
#[target_feature(enable = "avx512f")]
fn blocks4(words: &[u32; 16], counter: u32) -> [__m512i; 4] {
    let row = |i: usize| row_of(words, i);
    let lanes = _mm512_setr_epi32(0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0);
    let counters = _mm512_add_epi32(lanes, _mm512_setr4_epi32(counter as i32, 0, 0, 0));
    rows4([row(0), row(1), row(2), _mm512_add_epi32(row(3), counters)])
}

/// Row `i` (words `4i .. 4i + 4`) of the state in every 128-bit lane.
#[target_feature(enable = "avx512f")]
fn row_of(words: &[u32; 16], i: usize) -> __m512i {
    let w = &words[4 * i..4 * i + 4];
    _mm512_broadcast_i32x4(_mm_setr_epi32(
        w[0] as i32,
        w[1] as i32,
        w[2] as i32,
        w[3] as i32,
    ))
}

/// Four blocks from four initial states held horizontally (register `init[i]` holds row
/// `i` of the state, one block per 128-bit lane), each as one 64-byte register in byte
/// order.
#[target_feature(enable = "avx512f")]
fn rows4(init: [__m512i; 4]) -> [__m512i; 4] {
    let [mut a, mut b, mut c, mut d] = init;
    for _ in 0..10 {
        for diagonal in [false, true] {
            a = _mm512_add_epi32(a, b);
            d = _mm512_rol_epi32::<16>(_mm512_xor_si512(d, a));
            c = _mm512_add_epi32(c, d);
            b = _mm512_rol_epi32::<12>(_mm512_xor_si512(b, c));
            a = _mm512_add_epi32(a, b);
            d = _mm512_rol_epi32::<8>(_mm512_xor_si512(d, a));
            c = _mm512_add_epi32(c, d);
            b = _mm512_rol_epi32::<7>(_mm512_xor_si512(b, c));
            // Rotate rows 1–3 by 1, 2, 3 words so the diagonals line up as columns, and
            // back after the diagonal round.
            if diagonal {
                b = _mm512_shuffle_epi32::<0x93>(b);
                d = _mm512_shuffle_epi32::<0x39>(d);
            } else {
                b = _mm512_shuffle_epi32::<0x39>(b);
                d = _mm512_shuffle_epi32::<0x93>(d);
            }
            c = _mm512_shuffle_epi32::<0x4e>(c);
        }
    }
    let [a, b, c, d] = [
        _mm512_add_epi32(a, init[0]),
        _mm512_add_epi32(b, init[1]),
        _mm512_add_epi32(c, init[2]),
        _mm512_add_epi32(d, init[3]),
    ];
    // Block i is lane i of a, b, c, d: a 4×4 transposition of 128-bit lanes.
    let t0 = _mm512_shuffle_i32x4::<0x44>(a, b);
    let t1 = _mm512_shuffle_i32x4::<0xee>(a, b);
    let t2 = _mm512_shuffle_i32x4::<0x44>(c, d);
    let t3 = _mm512_shuffle_i32x4::<0xee>(c, d);
    [
        _mm512_shuffle_i32x4::<0x88>(t0, t2),
        _mm512_shuffle_i32x4::<0xdd>(t0, t2),
        _mm512_shuffle_i32x4::<0x88>(t1, t3),
        _mm512_shuffle_i32x4::<0xdd>(t1, t3),
    ]
}

/// XORs one 64-byte keystream block into `dst` (1..=64 bytes).
#[target_feature(enable = "avx512f")]
fn xor_block(dst: &mut [u8], ks: __m512i) {
    if dst.len() == 64 {
        let p = dst.as_mut_ptr();
        // SAFETY: `dst` is 64 writable bytes; unaligned loads and stores are allowed.
        unsafe {
            let d = _mm512_loadu_si512(p.cast());
            _mm512_storeu_si512(p.cast(), _mm512_xor_si512(d, ks));
        }
    } else {
        let mut tmp = [0u8; 64];
        // SAFETY: `tmp` is 64 writable bytes.
        unsafe { _mm512_storeu_si512(tmp.as_mut_ptr().cast(), ks) };
        for (o, k) in dst.iter_mut().zip(&tmp) {
            *o ^= k;
        }
        crate::wipe(&mut tmp, 0);
    }
}

/// The keystream of blocks `counter .. counter + n` (`n` ≤ 16), one 64-byte register per
/// block, from the narrowest pass that covers them: sixteen, eight or four blocks (the
/// registers past a shorter pass are zero).
#[target_feature(enable = "avx512f,avx512vl")]
fn keystream(words: &[u32; 16], counter: u32, n: usize) -> [__m512i; 16] {
    if n > 8 {
        return blocks16(words, counter);
    }
    let mut out = [_mm512_setzero_si512(); 16];
    if n > 4 {
        out[..8].copy_from_slice(&blocks8(words, counter));
    } else {
        out[..4].copy_from_slice(&blocks4(words, counter));
    }
    out
}

/// XORs the keystream of blocks `counter, counter + 1, …` into `buf`, sixteen blocks per
/// pass.
#[target_feature(enable = "avx512f,avx512vl")]
fn xor_from(words: &[u32; 16], mut counter: u32, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(16 * 64) {
        let ks = keystream(words, counter, chunk.len().div_ceil(64));
        // By reference: zipping the array by value would copy all 1 KiB of it first.
        for (dst, k) in chunk.chunks_mut(64).zip(&ks) {
            xor_block(dst, *k);
        }
        counter = counter.wrapping_add(16);
    }
}

/// Computes block 0 and hands its first 32 bytes (the Poly1305 key, RFC 8439 §2.6) to
/// `check` together with the untouched `buf`; if `check` returns true, XORs the keystream
/// from block 1 on into `buf`, else leaves `buf` alone. Block 0 comes from the same pass
/// as blocks 1–15 (fewer for a short `buf`), whose keystream waits while `check` runs, so
/// opening a message computes no more blocks than sealing it. Returns what `check` did.
#[target_feature(enable = "avx512f,avx512vl")]
pub(crate) fn apply(
    key: &[u32; 8],
    nonce: &[u8; 12],
    buf: &mut [u8],
    check: impl FnOnce(&[u8; 32], &[u8]) -> bool,
) -> bool {
    let mut words = state_words(key, nonce);
    let ks = keystream(&words, 0, (1 + buf.len().div_ceil(64)).min(16));
    let mut block0 = [0u8; 64];
    // SAFETY: `block0` is 64 writable bytes.
    unsafe { _mm512_storeu_si512(block0.as_mut_ptr().cast(), ks[0]) };
    let pass = check(otk_of(&block0), buf);
    if pass {
        let (now, later) = buf.split_at_mut(buf.len().min(15 * 64));
        for (dst, k) in now.chunks_mut(64).zip(&ks[1..]) {
            xor_block(dst, *k);
        }
        xor_from(&words, 16, later);
    }
    crate::wipe(&mut block0, 0);
    crate::wipe(&mut words, 0);
    pass
}

fn otk_of(block0: &[u8; 64]) -> &[u8; 32] {
    block0[..32]
        .try_into()
        .expect("a block is 64 bytes, the key its first 32")
}

/// One message of a batch for [`apply_many`]: its nonce, where its bytes lie in the batch's
/// buffer, and which of its keystream blocks to compute (block 0 is the Poly1305 key
/// block; block `c` ≥ 1 covers the message's bytes `64(c − 1) .. 64c`).
pub(crate) struct Span {
    pub(crate) nonce: [u8; 12],
    pub(crate) bytes: std::ops::Range<usize>,
    pub(crate) blocks: std::ops::Range<u32>,
}

/// The keystream blocks that spans `span(0) .. span(keys.len())` ask for, sixteen per pass
/// whichever messages they come from (each lane has its own nonce and counter): block 0 of
/// span `m` goes to `keys[m]` (its first 32 bytes, the Poly1305 key), every other block is
/// XORed into its span's bytes of `buf`. A 1420-byte message needs 24 blocks, a pass and a
/// half: alone it takes two passes, in a batch one and a half. Blocks past the end of a
/// span's bytes are not computed; callers check that every span lies in `buf`.
#[target_feature(enable = "avx512f,avx512vl")]
pub(crate) fn apply_many(
    key: &[u32; 8],
    span: impl Fn(usize) -> Span,
    buf: &mut [u8],
    keys: &mut [[u8; 32]],
) {
    let mut words = state_words(key, &[0; 12]);
    let mut pass = Pass {
        counters: _mm512_setzero_si512(),
        nonces: [_mm512_setzero_si512(); 3],
        runs: [Run::default(); 16],
        n_runs: 0,
        lanes: 0,
    };
    let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for m in 0..keys.len() {
        let span = span(m);
        let nonce = nonce_words(&span.nonce);
        // Block c ≥ 1 starts at byte 64(c − 1): none past the span's bytes is needed.
        let needed = 1 + span.bytes.len().div_ceil(64).min(u32::MAX as usize - 1) as u32;
        let (mut c, end) = (span.blocks.start, span.blocks.end.min(needed));
        while c < end {
            let free = 16 - pass.lanes;
            let k = (end - c).min(free as u32) as usize;
            // Lanes `lanes .. lanes + k` take blocks c, c + 1, … of this span.
            let mask = (((1u32 << k) - 1) << pass.lanes) as u16;
            let first = c.wrapping_sub(pass.lanes as u32);
            pass.counters =
                _mm512_mask_add_epi32(pass.counters, mask, _mm512_set1_epi32(first as i32), iota);
            for (v, w) in pass.nonces.iter_mut().zip(nonce) {
                *v = _mm512_mask_mov_epi32(*v, mask, _mm512_set1_epi32(w as i32));
            }
            pass.runs[pass.n_runs] = Run {
                span: m,
                lane: pass.lanes,
                count: k,
                counter: c,
                start: span.bytes.start,
                end: span.bytes.end,
            };
            pass.n_runs += 1;
            pass.lanes += k;
            c += k as u32;
            if pass.lanes == 16 {
                pass.run(&words, buf, keys);
            }
        }
    }
    if pass.lanes > 0 {
        pass.run(&words, buf, keys);
    }
    crate::wipe(&mut words, 0);
}

/// The nonce words of the state (words 13–15).
fn nonce_words(nonce: &[u8; 12]) -> [u32; 3] {
    std::array::from_fn(|i| {
        u32::from_le_bytes(
            nonce[4 * i..4 * i + 4]
                .try_into()
                .expect("4 bytes of a 12-byte nonce"),
        )
    })
}

/// Consecutive blocks of one span in consecutive lanes of a pass.
#[derive(Clone, Copy, Default)]
struct Run {
    /// Index of the span.
    span: usize,
    /// First lane.
    lane: usize,
    /// Lanes (= blocks).
    count: usize,
    /// Block counter of the first lane.
    counter: u32,
    /// The span's bytes in the buffer.
    start: usize,
    end: usize,
}

/// One pass of [`apply_many`] being filled: the per-lane state words 12–15 (counters and
/// nonces) and the runs of blocks its lanes hold.
struct Pass {
    counters: __m512i,
    nonces: [__m512i; 3],
    runs: [Run; 16],
    n_runs: usize,
    lanes: usize,
}

impl Pass {
    /// Computes the filled lanes' blocks, delivers them, and empties the pass. As alone, a
    /// pass of at most four or eight lanes is computed in the narrower forms, whose cost
    /// is about the latency of twenty rounds rather than their work.
    #[target_feature(enable = "avx512f,avx512vl")]
    fn run(&mut self, words: &[u32; 16], buf: &mut [u8], keys: &mut [[u8; 32]]) {
        let mut ks = [_mm512_setzero_si512(); 16];
        if self.lanes <= 4 {
            // Row 3 of lane l: its counter and nonce words, from the vertical registers.
            let mut vertical = [[0u32; 16]; 4];
            for (out, v) in vertical
                .iter_mut()
                .zip([self.counters].iter().chain(&self.nonces))
            {
                // SAFETY: `out` is 64 writable bytes; `storeu` has no alignment requirement.
                unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), *v) };
            }
            let row3: [u32; 16] = std::array::from_fn(|i| vertical[i % 4][i / 4]);
            let row = |i: usize| row_of(words, i);
            // SAFETY: `row3` is 64 readable bytes; `loadu` has no alignment requirement.
            let d = unsafe { _mm512_loadu_si512(row3.as_ptr().cast()) };
            ks[..4].copy_from_slice(&rows4([row(0), row(1), row(2), d]));
        } else if self.lanes <= 8 {
            let mut init = [_mm256_setzero_si256(); 16];
            for (v, &w) in init.iter_mut().zip(&words[..12]) {
                *v = _mm256_set1_epi32(w as i32);
            }
            init[12] = _mm512_castsi512_si256(self.counters);
            for (v, n) in init[13..].iter_mut().zip(&self.nonces) {
                *v = _mm512_castsi512_si256(*n);
            }
            ks[..8].copy_from_slice(&lanes8(init));
        } else {
            let mut init = [_mm512_setzero_si512(); 16];
            for (v, &w) in init.iter_mut().zip(&words[..12]) {
                *v = _mm512_set1_epi32(w as i32);
            }
            init[12] = self.counters;
            init[13..].copy_from_slice(&self.nonces);
            ks = lanes16(init);
        }
        for run in &self.runs[..self.n_runs] {
            let mut ks = &ks[run.lane..run.lane + run.count];
            let mut counter = run.counter;
            if counter == 0 {
                let mut block0 = [0u8; 64];
                // SAFETY: `block0` is 64 writable bytes.
                unsafe { _mm512_storeu_si512(block0.as_mut_ptr().cast(), ks[0]) };
                keys[run.span].copy_from_slice(otk_of(&block0));
                crate::wipe(&mut block0, 0);
                ks = &ks[1..];
                counter = 1;
            }
            // The run's blocks after block 0 cover bytes from 64(counter − 1) on, up to
            // the span's end (apply_many computes no block that starts past it).
            let from = run.start + 64 * (counter as usize - 1);
            let to = (from + 64 * ks.len()).min(run.end);
            if from < to {
                for (dst, k) in buf[from..to].chunks_mut(64).zip(ks) {
                    xor_block(dst, *k);
                }
            }
        }
        self.n_runs = 0;
        self.lanes = 0;
    }
}
