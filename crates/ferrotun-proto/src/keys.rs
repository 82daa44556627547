//! Long-term keys: x25519 static keys and optional preshared keys.
//!
//! Responsible for the key types, their generation from an [`Entropy`] source, their
//! WireGuard-compatible text form (standard base64 with padding, 44 characters, the output
//! of `wg genkey`/`wg pubkey`/`wg genpsk`), exact error reports for bad key text, and
//! keeping secrets out of logs (redacted `Debug`, zeroized on drop). Not responsible for
//! reading key files (the engine does that) or for ephemeral handshake keys (see
//! [`crate::handshake`]).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use thiserror::Error;
use x25519_dalek::StaticSecret;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::entropy::{Entropy, EntropyError};

/// Length in bytes of every key (Curve25519 scalars and points, the PSK): whitepaper §5.4.
pub const KEY_LEN: usize = 32;

/// Length of the base64 text of a key: `4 * ceil(32 / 3)` = 44 characters with padding.
pub const KEY_BASE64_LEN: usize = 44;

/// Longest key text we try to decode; anything longer is refused without decoding it.
const MAX_KEY_TEXT: usize = 256;

/// What is wrong with a key.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The text was empty (after trimming surrounding whitespace).
    #[error("the key is empty")]
    Empty,
    /// The text is far longer than any key.
    #[error(
        "the key text is {len} characters long; a key is {KEY_BASE64_LEN} characters of base64"
    )]
    TextTooLong {
        /// Length of the text in bytes.
        len: usize,
    },
    /// A character that is not in the standard base64 alphabet, or misplaced padding.
    #[error("invalid base64 character {character:?} at position {position}")]
    InvalidCharacter {
        /// Byte offset in the text as given (leading whitespace counted).
        position: usize,
        /// The offending character.
        character: char,
    },
    /// The last character carries bits that do not belong to the key (corrupt or truncated text).
    #[error(
        "invalid final base64 character {character:?} at position {position} (trailing bits set: corrupted or truncated key)"
    )]
    InvalidLastCharacter {
        /// Byte offset in the text as given.
        position: usize,
        /// The offending character.
        character: char,
    },
    /// The number of base64 symbols cannot be a whole number of bytes.
    #[error("invalid base64 length: {symbols} symbols")]
    InvalidBase64Length {
        /// Number of base64 symbols found.
        symbols: usize,
    },
    /// Padding missing or malformed (WireGuard keys end in exactly one `=`).
    #[error("invalid base64 padding (a key is 43 characters followed by one '=')")]
    InvalidPadding,
    /// The text decoded to the wrong number of bytes.
    #[error("the key decodes to {got} bytes, want {want}")]
    WrongLength {
        /// Decoded length.
        got: usize,
        /// Required length (32).
        want: usize,
    },
    /// A public key of small order (its Diffie-Hellman result with anything is all zero).
    #[error("the public key {key} is a low-order point; no Diffie-Hellman with it is safe")]
    LowOrderPoint {
        /// The rejected key, as base64.
        key: String,
    },
    /// Randomness was unavailable while generating a key.
    #[error(transparent)]
    Entropy(#[from] EntropyError),
}

/// Decodes WireGuard key text (surrounding ASCII whitespace ignored) into 32 bytes.
fn decode_key(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    let lead = text.len() - text.trim_start().len();
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(KeyError::Empty);
    }
    if trimmed.len() > MAX_KEY_TEXT {
        return Err(KeyError::TextTooLong { len: trimmed.len() });
    }
    // Room for the longest text we accept: 256 symbols decode to at most 192 bytes.
    let mut out = Zeroizing::new([0u8; MAX_KEY_TEXT / 4 * 3]);
    let n = STANDARD
        .decode_slice(trimmed.as_bytes(), &mut out[..])
        .map_err(|e| {
            let char_at = |offset: usize| {
                trimmed
                    .get(offset..)
                    .and_then(|rest| rest.chars().next())
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            };
            match e {
                base64::DecodeSliceError::DecodeError(d) => match d {
                    base64::DecodeError::InvalidByte(offset, _) => KeyError::InvalidCharacter {
                        position: lead + offset,
                        character: char_at(offset),
                    },
                    base64::DecodeError::InvalidLength(symbols) => {
                        KeyError::InvalidBase64Length { symbols }
                    }
                    base64::DecodeError::InvalidLastSymbol { offset, .. } => {
                        KeyError::InvalidLastCharacter {
                            position: lead + offset,
                            character: char_at(offset),
                        }
                    }
                    base64::DecodeError::InvalidPadding => KeyError::InvalidPadding,
                },
                // Cannot happen: the buffer holds the decoding of MAX_KEY_TEXT symbols.
                base64::DecodeSliceError::OutputSliceTooSmall => {
                    KeyError::TextTooLong { len: trimmed.len() }
                }
            }
        })?;
    if n != KEY_LEN {
        return Err(KeyError::WrongLength {
            got: n,
            want: KEY_LEN,
        });
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&out[..KEY_LEN]);
    Ok(key)
}

fn encode_key(key: &[u8; KEY_LEN]) -> Zeroizing<String> {
    let mut s = Zeroizing::new(String::with_capacity(KEY_BASE64_LEN));
    STANDARD.encode_string(key, &mut s);
    s
}

/// An x25519 static private key. Zeroized on drop; `Debug` never prints it.
#[derive(Clone)]
pub struct PrivateKey(StaticSecret);

impl PrivateKey {
    /// A new random key, clamped as `wg genkey` does (RFC 7748 §5 "decodeScalar25519").
    pub fn generate(rng: &mut (impl Entropy + ?Sized)) -> Result<Self, KeyError> {
        let mut b = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill(&mut b[..])?;
        b[0] &= 248;
        b[31] &= 127;
        b[31] |= 64;
        Ok(PrivateKey(StaticSecret::from(*b)))
    }

    /// The key with these bytes (x25519 clamps scalars when it uses them).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PrivateKey(StaticSecret::from(bytes))
    }

    /// Parses `wg genkey` output (standard base64, 44 characters; surrounding whitespace such
    /// as a file's trailing newline is ignored).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        Ok(PrivateKey(StaticSecret::from(*decode_key(text)?)))
    }

    /// The key as base64, in a string that is zeroized when dropped.
    pub fn to_base64(&self) -> Zeroizing<String> {
        encode_key(self.0.as_bytes())
    }

    /// The matching public key (`wg pubkey`).
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }

    /// The raw scalar bytes (for the handshake; never log them).
    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.0
    }

    /// The raw scalar bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// An x25519 public key: 32 bytes, printed as base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// The key with these bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PublicKey(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Parses `wg pubkey` output.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        Ok(PublicKey(*decode_key(text)?))
    }

    /// The key as base64 (44 characters).
    pub fn to_base64(&self) -> String {
        let mut s = String::with_capacity(KEY_BASE64_LEN);
        STANDARD.encode_string(self.0, &mut s);
        s
    }

    /// Refuses keys whose Diffie-Hellman result with our key is all zero (points of small
    /// order: RFC 7748 §6.1 allows the check; WireGuard refuses such peers).
    pub(crate) fn check_contributory(&self, ours: &PrivateKey) -> Result<[u8; KEY_LEN], KeyError> {
        let shared = ours
            .secret()
            .diffie_hellman(&x25519_dalek::PublicKey::from(self.0));
        if !shared.was_contributory() {
            return Err(KeyError::LowOrderPoint {
                key: self.to_base64(),
            });
        }
        Ok(shared.to_bytes())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; KEY_BASE64_LEN];
        let n = STANDARD
            .encode_slice(self.0, &mut buf)
            .map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// An optional symmetric key mixed into the handshake (Noise `psk2`), for post-quantum
/// resistance. All zero when the peer has none, as WireGuard does (whitepaper §5.4.2).
#[derive(Clone, Default, Zeroize, ZeroizeOnDrop)]
pub struct PresharedKey([u8; KEY_LEN]);

impl PresharedKey {
    /// The all-zero key used when no PSK is configured.
    pub const fn none() -> Self {
        PresharedKey([0; KEY_LEN])
    }

    /// A new random key (`wg genpsk`).
    pub fn generate(rng: &mut (impl Entropy + ?Sized)) -> Result<Self, KeyError> {
        let mut k = PresharedKey::none();
        rng.fill(&mut k.0)?;
        Ok(k)
    }

    /// The key with these bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PresharedKey(bytes)
    }

    /// Parses `wg genpsk` output.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        Ok(PresharedKey(*decode_key(text)?))
    }

    /// The key as base64, zeroized when dropped.
    pub fn to_base64(&self) -> Zeroizing<String> {
        encode_key(&self.0)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entropy::SeededEntropy;
    use proptest::prelude::*;

    #[test]
    fn known_vector_public_from_private() {
        // RFC 7748 §6.1: Alice's private key and public key.
        let sk = hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let pk = hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        assert_eq!(PrivateKey::from_bytes(sk).public_key().as_bytes(), &pk);
    }

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn generated_keys_are_clamped_and_round_trip() {
        let mut rng = SeededEntropy::new(1);
        let k = PrivateKey::generate(&mut rng).unwrap();
        let b = k.as_bytes();
        assert_eq!(b[0] & 7, 0);
        assert_eq!(b[31] & 0xc0, 0x40);
        let text = k.to_base64();
        assert_eq!(text.len(), KEY_BASE64_LEN);
        assert!(text.ends_with('='));
        let back = PrivateKey::from_base64(&text).unwrap();
        assert_eq!(back.as_bytes(), k.as_bytes());
        assert_eq!(back.public_key(), k.public_key());
    }

    #[test]
    fn debug_is_redacted() {
        let k = PrivateKey::from_bytes([0x41; 32]);
        assert_eq!(format!("{k:?}"), "PrivateKey(<redacted>)");
        let p = PresharedKey::from_bytes([0x41; 32]);
        assert_eq!(format!("{p:?}"), "PresharedKey(<redacted>)");
        let pubk = k.public_key();
        assert_eq!(format!("{pubk}"), pubk.to_base64());
        assert!(format!("{pubk:?}").contains(&pubk.to_base64()));
    }

    #[test]
    fn whitespace_is_ignored_and_positions_count_it() {
        let k = PublicKey::from_bytes([7; 32]);
        let text = format!("  {}\n", k.to_base64());
        assert_eq!(PublicKey::from_base64(&text).unwrap(), k);
        let mut bad = k.to_base64();
        bad.replace_range(5..6, "*");
        assert_eq!(
            PublicKey::from_base64(&format!("  {bad}")),
            Err(KeyError::InvalidCharacter {
                position: 7,
                character: '*'
            })
        );
    }

    #[test]
    fn every_bad_input_has_its_error() {
        let good = PublicKey::from_bytes([0xab; 32]).to_base64();
        assert_eq!(PublicKey::from_base64(""), Err(KeyError::Empty));
        assert_eq!(PublicKey::from_base64(" \n"), Err(KeyError::Empty));
        assert_eq!(
            PublicKey::from_base64(&"A".repeat(300)),
            Err(KeyError::TextTooLong { len: 300 })
        );
        // 31 bytes and 33 bytes.
        assert_eq!(
            PublicKey::from_base64(&STANDARD.encode([1u8; 31])),
            Err(KeyError::WrongLength { got: 31, want: 32 })
        );
        assert_eq!(
            PublicKey::from_base64(&STANDARD.encode([1u8; 33])),
            Err(KeyError::WrongLength { got: 33, want: 32 })
        );
        // Non-ASCII character.
        let mut s = good.clone();
        s.replace_range(0..1, "é");
        assert!(matches!(
            PublicKey::from_base64(&s),
            Err(KeyError::InvalidCharacter {
                position: 0,
                character: 'é'
            })
        ));
        // URL-safe alphabet is not WireGuard's.
        let mut s = good.clone();
        s.replace_range(3..4, "-");
        assert_eq!(
            PublicKey::from_base64(&s),
            Err(KeyError::InvalidCharacter {
                position: 3,
                character: '-'
            })
        );
        // Missing padding.
        assert_eq!(
            PublicKey::from_base64(&good[..43]),
            Err(KeyError::InvalidPadding)
        );
        // Truncated by one symbol: 42 symbols + '='.
        let s = format!("{}=", &good[..42]);
        assert!(PublicKey::from_base64(&s).is_err());
        // Trailing bits set in the last symbol ('r' has low bits that must be 0 there).
        let mut s = good.clone();
        s.replace_range(42..43, "r");
        assert_eq!(
            PublicKey::from_base64(&s),
            Err(KeyError::InvalidLastCharacter {
                position: 42,
                character: 'r'
            })
        );
        // A symbol count that cannot be bytes.
        assert_eq!(
            PublicKey::from_base64("A"),
            Err(KeyError::InvalidBase64Length { symbols: 1 })
        );
        // Padding in the middle.
        let mut s = good.clone();
        s.replace_range(10..11, "=");
        assert!(matches!(
            PublicKey::from_base64(&s),
            Err(KeyError::InvalidCharacter { character: '=', .. })
        ));
        // The same decoder serves private and preshared keys.
        assert_eq!(PrivateKey::from_base64("").unwrap_err(), KeyError::Empty);
        assert_eq!(PresharedKey::from_base64("").unwrap_err(), KeyError::Empty);
    }

    #[test]
    fn low_order_public_key_is_refused() {
        let ours = PrivateKey::from_bytes([9; 32]);
        assert!(matches!(
            PublicKey::from_bytes([0; 32]).check_contributory(&ours),
            Err(KeyError::LowOrderPoint { .. })
        ));
        // u = 1 is also of small order (RFC 7748 §6.1 / cr.yp.to list).
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(
            PublicKey::from_bytes(one)
                .check_contributory(&ours)
                .is_err()
        );
    }

    proptest! {
        #[test]
        fn base64_round_trips(bytes in proptest::array::uniform32(any::<u8>())) {
            let p = PublicKey::from_bytes(bytes);
            prop_assert_eq!(PublicKey::from_base64(&p.to_base64()).unwrap(), p);
            let s = PresharedKey::from_bytes(bytes);
            let s2 = PresharedKey::from_base64(&s.to_base64()).unwrap();
            prop_assert_eq!(s2.as_bytes(), &bytes);
            let k = PrivateKey::from_bytes(bytes);
            let k2 = PrivateKey::from_base64(&k.to_base64()).unwrap();
            prop_assert_eq!(k2.as_bytes(), &bytes);
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,300}") {
            let _ = PublicKey::from_base64(&s);
        }
    }
}
