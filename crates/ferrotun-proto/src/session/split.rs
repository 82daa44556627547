//! The split data path: sealing and opening outside the session.
//!
//! A multi-threaded driver seals with [`Session::current_keypair`] on one core and opens
//! with [`Session::live_keypairs`] on another, without taking the session's lock per
//! packet. The timers still need to know what happened, so the driver reports it here,
//! in batches, with the times the events happened: these calls run exactly the timer hooks
//! that [`Session::encapsulate`] and [`Session::decapsulate`] run, minus the cryptography.

use std::sync::Arc;
use std::time::Instant;

use super::Session;
use crate::transport::Keypair;

impl Session {
    /// Every keypair that may open messages now: current, the unconfirmed next, and the
    /// retired ones still accepted.
    pub fn live_keypairs(&self) -> Vec<Arc<Keypair>> {
        self.keypairs().cloned().collect()
    }

    /// The local index of the unconfirmed `next` keypair (the responder's new keypair that
    /// the peer has not used yet), if any.
    pub fn next_keypair_index(&self) -> Option<u32> {
        self.next.as_deref().map(Keypair::local_index)
    }

    /// Asks for a handshake now, as data waiting to be sent would (a client connecting at
    /// start). Poll for the initiation.
    pub fn request_handshake(&mut self) {
        self.request_initiation(false);
    }

    /// Starts over on a new path (a client's new TCP connection): forgets every keypair and
    /// asks for an initiation at once, without the usual wait of REKEY_TIMEOUT since the
    /// last one (that limit protects a path that may be lossy, not a fresh connection).
    pub fn restart(&mut self) {
        self.reset();
        self.last_sent_handshake = None;
        self.request_initiation(false);
    }

    /// The driver had no usable keypair and queued a packet, or saw the current keypair
    /// reach its rekey age: a handshake is requested and, once it completes,
    /// [`crate::Transmit::FlushQueue`] follows.
    pub fn note_queued(&mut self) {
        self.queue_pending = true;
        self.request_initiation(false);
    }

    /// The driver sealed and sent data with the current keypair at `at`.
    pub fn note_sent(&mut self, at: Instant) {
        self.on_any_authenticated_packet_traversal(at);
        self.on_any_authenticated_packet_sent();
        self.on_data_sent(at);
        self.confirm_keepalive = false;
        self.keep_key_fresh_send(at);
    }

    /// The driver opened an authenticated message at `at`. `used_index` is the local index
    /// of the keypair it opened with when that may be the unconfirmed `next` (which this
    /// promotes to current, as [`Session::decapsulate`] does); `data` is false for a
    /// keepalive.
    pub fn note_received(&mut self, at: Instant, used_index: Option<u32>, data: bool) {
        if let Some(index) = used_index
            && self.next_keypair_index() == Some(index)
        {
            let old = self.current.take();
            self.current = self.next.take();
            self.retire(old);
            self.on_handshake_complete(at);
        }
        self.keep_key_fresh_receive(at);
        self.on_any_authenticated_packet_received();
        self.on_any_authenticated_packet_traversal(at);
        if data {
            self.on_data_received(at);
        }
    }
}
