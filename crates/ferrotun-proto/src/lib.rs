//! # ferrotun-proto: the sans-IO protocol core of ferrotun
//!
//! This crate is responsible for everything between "a packet the kernel gave us" and "a
//! datagram for the network" that does not touch a socket, a device or a clock: WireGuard's
//! wire formats, the Noise IKpsk2 handshake, transport keys and counters, the anti-replay
//! window, WireGuard's timer state machine, LZ4 payload compression and the TCP stream
//! codec. It is *not* responsible for I/O, peer lookup tables, routing, queues or logging:
//! the caller (the `ferrotun` engine) owns those, passes `now` (and a wall-clock value for
//! handshake timestamps) into every call, lends the buffers, and does what the returned
//! values tell it.
//!
//! ## Map
//! | module | what |
//! |---|---|
//! | [`keys`] | x25519 private/public keys, preshared keys, base64 like `wg genkey` |
//! | [`entropy`] | the injectable randomness source ([`Entropy`], [`OsEntropy`], [`SeededEntropy`]) |
//! | [`wire`] | zero-copy views of the four message types, [`wire::Message::classify`] |
//! | [`aead`] | the transport AEAD trait and its three backends (AVX-512, ring, RustCrypto) |
//! | [`handshake`] | Noise_IKpsk2 as WireGuard lays it out; mac1/mac2, cookies, TAI64N |
//! | [`replay`] | the RFC 6479 anti-replay bitmap (8192 bits) |
//! | [`transport`] | [`Keypair`]: seal/open of data messages in caller buffers, thread-safe |
//! | [`session`] | [`Session`]: per-peer keypair rotation and WireGuard's timers |
//! | [`compress`] | adaptive LZ4 block compression bounded by the MTU |
//! | [`tcp`] | 2-byte big-endian length framing for TCP transport |
//! | [`ip`] | IP packet length recovery after padding |
//!
//! ## The native extension (how ferrotun differs from WireGuard on the wire)
//! WireGuard's four messages begin with a little-endian `u32` message type whose upper
//! three bytes are reserved and zero. ferrotun keeps every message byte-for-byte in that
//! layout and uses only **byte 1** (the first reserved byte) for flags; bytes 2 and 3 must
//! stay zero (a non-zero value is a parse error). With all flags zero every message is
//! exactly WireGuard's.
//!
//! * **Transport data (type 4)**: byte 1 holds [`PayloadFlags`]: bit 0 = the payload is an
//!   LZ4 block ([`PayloadFlags::COMPRESSED`]), bit 1 = the payload is an Ethernet frame
//!   ([`PayloadFlags::ETHERNET`], TAP mode), bit 2 = the packet's TCP or UDP checksum
//!   is partial, to be completed by the receiver ([`PayloadFlags::PARTIAL_CHECKSUM`]);
//!   bits 3..7 must be zero. The flags are
//!   authenticated as AEAD associated data: the AAD is **empty when the flag byte is 0**
//!   (so plain WireGuard data stays byte-compatible) and is **the single flag byte
//!   otherwise**. Flipping any bit of the header therefore either fails parsing (type,
//!   reserved bytes, unknown flags), selects the wrong key or counter (receiver index,
//!   counter) or changes the AAD (flags): all of which fail authentication. A data message
//!   costs no byte more than WireGuard's (16-byte header + 16-byte tag).
//! * **Handshake initiation (type 1)**: byte 1 holds the initiator's [`HandshakeFlags`]
//!   (bit 0 = wants compression, bit 1 = TAP/Ethernet mode; bits 2..7 must be zero). When
//!   non-zero they are authenticated by appending the flag byte to the Noise prologue:
//!   `prologue = "WireGuard v1 zx2c4 Jason@zx2c4.com" || flags`. Zero flags give
//!   WireGuard's prologue exactly.
//! * **Handshake response (type 2)**: byte 1 holds the responder's [`HandshakeFlags`].
//!   When non-zero they are authenticated by one extra `MixHash(flags)` right after the
//!   `MixKeyAndHash(psk)` step and just before the encrypted empty payload, so the
//!   payload's AEAD (whose associated data is the handshake hash) covers them. Zero flags
//!   give WireGuard's response exactly.
//! * **Cookie reply (type 3)**: unchanged; bytes 1..4 must be zero.
//!
//! After a handshake both sides expose the peer's flags ([`Session::peer_flags`]) so the
//! engine can refuse a mismatch with a clear reason. mac1 and mac2 cover byte 1 like every
//! other byte before them.
//!
//! **Padding.** As WireGuard does (whitepaper §5.4.6), plaintext is zero-padded to a
//! multiple of 16 bytes without exceeding the MTU, but only for uncompressed IP payloads
//! (neither compressed nor Ethernet), whose true length the receiver recovers from the
//! IPv4/IPv6 header
//! ([`ip::ip_packet_len`]). Compressed and Ethernet payloads are never padded: their length
//! could not be recovered.
//!
//! ## Deviations from WireGuard (deliberate, documented where they live)
//! * Local receiver indexes are `(peer slot << 8) | rolling 8-bit counter` (see
//!   [`session::SessionIndex`]) so the caller finds a peer with a shift, not a table.
//! * Two retired keypairs (not one) keep receiving until they expire, so a simultaneous
//!   initiation by both peers never loses packets in flight (see [`session`]).
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod aead;
pub mod compress;
pub mod entropy;
pub mod handshake;
pub mod ip;
pub mod keys;
pub mod replay;
pub mod session;
pub mod tcp;
pub mod transport;
pub mod wire;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

mod primitives;

pub use aead::{AeadBackend, TransportAead};
pub use compress::{CompressError, Compressor, decompress};
pub use entropy::{Entropy, OsEntropy, SeededEntropy};
pub use handshake::{HandshakeError, Identity, PendingInitiation, Phase1, Tai64N};
pub use keys::{KeyError, PresharedKey, PrivateKey, PublicKey};
pub use replay::ReplayWindow;
pub use session::{
    Decapsulated, Encapsulated, ResponseOutcome, Session, SessionConfig, SessionIndex, Transmit,
};
pub use tcp::{FrameError, StreamDecoder};
pub use transport::{KeyLifetime, Keypair, Opened, Prepared, Received, TransportError};
pub use wire::{HandshakeFlags, HandshakeMessage, Message, PayloadFlags, WireError};
