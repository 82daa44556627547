use super::*;
use proptest::prelude::*;

#[test]
fn lengths_match_the_whitepaper() {
    assert_eq!(INITIATION_LEN, 148);
    assert_eq!(RESPONSE_LEN, 92);
    assert_eq!(COOKIE_REPLY_LEN, 64);
    assert_eq!(DATA_MIN_LEN, 32);
}

#[test]
fn classify_each_kind_and_errors() {
    let mut init = [0u8; INITIATION_LEN];
    init[0] = 1;
    init[4..8].copy_from_slice(&7u32.to_le_bytes());
    assert!(matches!(Message::classify(&init), Ok(Message::Initiation(i)) if i.sender() == 7));
    let mut resp = [0u8; RESPONSE_LEN];
    resp[0] = 2;
    resp[8..12].copy_from_slice(&9u32.to_le_bytes());
    assert_eq!(Message::classify(&resp).unwrap().receiver_index(), Some(9));
    let mut cookie = [0u8; COOKIE_REPLY_LEN];
    cookie[0] = 3;
    assert_eq!(
        Message::classify(&cookie).unwrap().kind(),
        MessageKind::CookieReply
    );
    let mut data = [0u8; 40];
    data[0] = 4;
    data[1] = 3;
    data[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    match Message::classify(&data).unwrap() {
        Message::Data(d) => {
            assert_eq!(d.counter(), u64::MAX);
            assert_eq!(
                d.flags(),
                PayloadFlags::COMPRESSED.union(PayloadFlags::ETHERNET)
            );
            assert_eq!(d.payload_range(), 16..24);
        }
        other => panic!("{other:?}"),
    }

    assert_eq!(Message::classify(&[]).unwrap_err(), WireError::Empty);
    assert_eq!(
        Message::classify(&[5]).unwrap_err(),
        WireError::UnknownType(5)
    );
    assert_eq!(
        Message::classify(&[0; 148]).unwrap_err(),
        WireError::UnknownType(0)
    );
    assert_eq!(
        Message::classify(&init[..147]).unwrap_err(),
        WireError::WrongLength {
            kind: MessageKind::Initiation,
            got: 147,
            want: 148
        }
    );
    let mut long = [0u8; 149];
    long[0] = 1;
    assert_eq!(
        Message::classify(&long).unwrap_err(),
        WireError::WrongLength {
            kind: MessageKind::Initiation,
            got: 149,
            want: 148
        }
    );
    assert_eq!(
        Message::classify(&data[..31]).unwrap_err(),
        WireError::TooShort {
            kind: MessageKind::Data,
            got: 31,
            min: 32
        }
    );
    let mut bad = init;
    bad[3] = 1;
    assert_eq!(
        Message::classify(&bad).unwrap_err(),
        WireError::ReservedNonZero {
            kind: MessageKind::Initiation,
            offset: 3,
            value: 1
        }
    );
    let mut bad = resp;
    bad[1] = 4;
    assert_eq!(
        Message::classify(&bad).unwrap_err(),
        WireError::UnknownFlags {
            kind: MessageKind::Response,
            bits: 4
        }
    );
    let mut bad = cookie;
    bad[1] = 1;
    assert_eq!(
        Message::classify(&bad).unwrap_err(),
        WireError::UnknownFlags {
            kind: MessageKind::CookieReply,
            bits: 1
        }
    );
    let mut bad = data;
    bad[2] = 0x80;
    assert_eq!(
        Message::classify(&bad).unwrap_err(),
        WireError::ReservedNonZero {
            kind: MessageKind::Data,
            offset: 2,
            value: 0x80
        }
    );
}

#[test]
fn handshake_messages_leave_the_buffer_typed() {
    let mut init = [0u8; INITIATION_LEN];
    init[0] = 1;
    init[1] = 2;
    init[4..8].copy_from_slice(&7u32.to_le_bytes());
    let mut resp = [0u8; RESPONSE_LEN];
    resp[0] = 2;
    resp[8..12].copy_from_slice(&9u32.to_le_bytes());
    let mut cookie = [0u8; COOKIE_REPLY_LEN];
    cookie[0] = 3;
    cookie[4..8].copy_from_slice(&11u32.to_le_bytes());
    for (bytes, kind, receiver) in [
        (&init[..], MessageKind::Initiation, None),
        (&resp[..], MessageKind::Response, Some(9)),
        (&cookie[..], MessageKind::CookieReply, Some(11)),
    ] {
        let owned = Message::classify(bytes).unwrap().to_handshake().unwrap();
        assert_eq!(owned.kind(), kind);
        assert_eq!(owned.receiver_index(), receiver);
        assert_eq!(owned.as_bytes(), bytes);
    }
    match Message::classify(&init).unwrap().to_handshake() {
        Some(HandshakeMessage::Initiation(i)) => {
            assert_eq!((i.sender(), i.flags()), (7, HandshakeFlags::ETHERNET))
        }
        other => panic!("{other:?}"),
    }
    let mut data = [0u8; 40];
    data[0] = 4;
    let d = Message::classify(&data).unwrap();
    assert!(d.to_handshake().is_none());
}

#[test]
fn a_data_header_is_read_whole() {
    let mut data = [0u8; 48];
    data[0] = 4;
    data[1] = 4;
    data[4..8].copy_from_slice(&0x0102_0304u32.to_le_bytes());
    data[8..16].copy_from_slice(&99u64.to_le_bytes());
    let h = DataMessage::new_checked(&data[..]).unwrap().header();
    assert_eq!(
        h,
        DataHeader {
            flags: PayloadFlags::PARTIAL_CHECKSUM,
            receiver: 0x0102_0304,
            counter: 99,
        }
    );
    let r = crate::Received::parse(&data, 100).unwrap();
    assert_eq!(
        (r.at.clone(), r.header, r.payload()),
        (100..148, h, 116..132)
    );
    assert_eq!(
        crate::Received::parse(&data[..31], 0),
        Err(WireError::TooShort {
            kind: MessageKind::Data,
            got: 31,
            min: 32
        })
    );
}

#[test]
fn emit_then_parse() {
    let mut buf = [0xffu8; 200];
    let mut m = Initiation::emit(&mut buf, HandshakeFlags::ETHERNET).unwrap();
    m.set_sender(0xdead_beef);
    m.field_mut(initiation::MAC1).fill(1);
    let v = Initiation::new_checked(&buf[..INITIATION_LEN]).unwrap();
    assert_eq!(v.sender(), 0xdead_beef);
    assert_eq!(v.flags(), HandshakeFlags::ETHERNET);
    assert_eq!(v.mac1(), &[1; 16]);
    assert_eq!(v.mac2(), &[0; 16]);
    assert_eq!(v.mac1_input().len(), 116);
    assert_eq!(v.mac2_input().len(), 132);
    assert!(Initiation::emit(&mut [0u8; 147], HandshakeFlags::NONE).is_none());

    let mut buf = [0u8; 92];
    let mut r = Response::emit(&mut buf, HandshakeFlags::COMPRESSION).unwrap();
    r.set_sender(1);
    r.set_receiver(2);
    let v = Response::new_checked(&buf[..]).unwrap();
    assert_eq!(
        (v.sender(), v.receiver(), v.flags()),
        (1, 2, HandshakeFlags::COMPRESSION)
    );

    let mut buf = [0u8; 64];
    let mut c = CookieReply::emit(&mut buf).unwrap();
    c.set_receiver(5);
    c.field_mut(cookie::NONCE).fill(3);
    let v = CookieReply::new_checked(&buf[..]).unwrap();
    assert_eq!((v.receiver(), v.nonce()), (5, &[3u8; 24]));
}

#[test]
fn flag_types() {
    assert_eq!(PayloadFlags::from_bits(8), None);
    assert_eq!(
        PayloadFlags::from_bits(4),
        Some(PayloadFlags::PARTIAL_CHECKSUM)
    );
    assert_eq!(HandshakeFlags::from_bits(0x80), None);
    assert!(
        PayloadFlags::from_bits(3)
            .unwrap()
            .contains(PayloadFlags::ETHERNET)
    );
    assert!(PayloadFlags::NONE.is_empty());
    assert!(!HandshakeFlags::COMPRESSION.contains(HandshakeFlags::ETHERNET));
}

proptest! {
    #[test]
    fn classify_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Message::classify(&bytes);
    }

    #[test]
    fn classify_never_panics_on_plausible_headers(
        ty in 0u8..6, flags in any::<u8>(), r in any::<u8>(), len in 0usize..200
    ) {
        let mut b = vec![0u8; len];
        if len > 0 { b[0] = ty; }
        if len > 1 { b[1] = flags; }
        if len > 2 { b[2] = r; }
        if let Ok(m) = Message::classify(&b) {
            // Whatever parses has a valid header (flags its type knows: two handshake
            // flags, three payload flags) and a length the type allows.
            prop_assert!(r == 0);
            match m {
                Message::Initiation(_) => prop_assert!(len == 148 && flags & !3 == 0),
                Message::Response(_) => prop_assert!(len == 92 && flags & !3 == 0),
                Message::CookieReply(_) => prop_assert!(len == 64 && flags == 0),
                Message::Data(d) => {
                    prop_assert!(len >= 32 && flags & !7 == 0);
                    let _ = (d.tag(), d.counter());
                }
            }
        }
    }
}
