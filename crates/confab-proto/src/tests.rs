//! Round trips, limits and a property test that `decode` never panics.

use super::*;
use proptest::prelude::*;
use serde_json::json;

fn round_trip_client(msg: ClientMsg) {
    let text = encode(&msg);
    assert_eq!(decode(text.as_bytes()).unwrap(), msg, "{text}");
}

#[test]
fn client_messages_match_the_documented_json() {
    let cases = [
        (
            json!({"type":"join","room":"standup","name":"Ada","password":null}),
            ClientMsg::Join { room: "standup".into(), name: "Ada".into(), password: None, resume: None },
        ),
        (
            json!({"type":"join","room":"standup","name":"Ada","password":"s3cret"}),
            ClientMsg::Join {
                room: "standup".into(),
                name: "Ada".into(),
                password: Some("s3cret".into()),
                resume: None,
            },
        ),
        (
            json!({"type":"join","room":"standup","name":"Ada","resume":{"peer_id":"p-1_x","token":"t0K"}}),
            ClientMsg::Join {
                room: "standup".into(),
                name: "Ada".into(),
                password: None,
                resume: Some(Resume { peer_id: "p-1_x".into(), token: "t0K".into() }),
            },
        ),
        (
            json!({"type":"signal","to":"p1","data":{"sdp":{"type":"offer","sdp":"v=0\r\n"}}}),
            ClientMsg::Signal {
                to: "p1".into(),
                data: SignalData::Sdp(SessionDescription { kind: SdpType::Offer, sdp: "v=0\r\n".into() }),
            },
        ),
        (
            json!({"type":"signal","to":"p1","data":{"candidate":{"candidate":"candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}}}),
            ClientMsg::Signal {
                to: "p1".into(),
                data: SignalData::Candidate(Some(IceCandidate {
                    candidate: "candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host".into(),
                    sdp_mid: Some("0".into()),
                    sdp_mline_index: Some(0),
                    username_fragment: None,
                })),
            },
        ),
        (
            json!({"type":"signal","to":"p1","data":{"candidate":null}}),
            ClientMsg::Signal { to: "p1".into(), data: SignalData::Candidate(None) },
        ),
        (json!({"type":"state","muted":true,"camera":false}), ClientMsg::State { muted: true, camera: false }),
        (json!({"type":"chat","text":"hello"}), ClientMsg::Chat { text: "hello".into() }),
        (json!({"type":"leave"}), ClientMsg::Leave),
    ];
    for (wire, want) in cases {
        let got = decode(wire.to_string().as_bytes()).unwrap();
        assert_eq!(got, want);
        round_trip_client(want);
    }
}

#[test]
fn signal_data_keeps_browser_shape() {
    let data = SignalData::Candidate(Some(IceCandidate {
        candidate: "candidate:x".into(),
        sdp_mid: Some("0".into()),
        sdp_mline_index: Some(0),
        username_fragment: Some("abcd".into()),
    }));
    let v: serde_json::Value = serde_json::to_value(&data).unwrap();
    assert_eq!(
        v,
        json!({"candidate":{"candidate":"candidate:x","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"abcd"}})
    );
    let end: serde_json::Value = serde_json::to_value(SignalData::Candidate(None)).unwrap();
    assert_eq!(end, json!({"candidate": null}));
    let sdp: serde_json::Value =
        serde_json::to_value(SignalData::Sdp(SessionDescription { kind: SdpType::Answer, sdp: "v=0".into() })).unwrap();
    assert_eq!(sdp, json!({"sdp":{"type":"answer","sdp":"v=0"}}));
}

#[test]
fn server_messages_round_trip() {
    let msgs = [
        ServerMsg::Joined {
            peer_id: "me".into(),
            room: "r".into(),
            max_peers: 4,
            peers: vec![PeerInfo { peer_id: "b".into(), name: "Bob".into(), muted: false, camera: true }],
            ice_servers: vec![IceServer {
                urls: vec!["turn:h:3478".into()],
                username: Some("1:me".into()),
                credential: Some("x".into()),
            }],
            version: PROTOCOL_VERSION,
            resume_token: "tok".into(),
            resumed: true,
        },
        ServerMsg::Left { room: "r".into() },
        ServerMsg::PeerJoined {
            peer: PeerInfo { peer_id: "b".into(), name: "Bob".into(), muted: true, camera: false },
        },
        ServerMsg::PeerLeft { peer_id: "b".into() },
        ServerMsg::Signal { from: "b".into(), data: SignalData::Candidate(None) },
        ServerMsg::State { from: "b".into(), muted: true, camera: true },
        ServerMsg::Chat { from: "b".into(), name: "Bob".into(), text: "hi".into(), ts: 1_764_000_000_000 },
        ServerMsg::Error { code: ErrorCode::RoomFull, message: "full".into() },
    ];
    for m in msgs {
        assert_eq!(decode_server(encode(&m).as_bytes()).unwrap(), m);
    }
    let v: serde_json::Value =
        serde_json::from_str(&encode(&ServerMsg::Error { code: ErrorCode::AlreadyJoined, message: "m".into() }))
            .unwrap();
    assert_eq!(v, json!({"type":"error","code":"already_joined","message":"m"}));
}

#[test]
fn every_error_code_spells_as_serde_does() {
    for code in ErrorCode::ALL {
        assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        assert_eq!(ErrorCode::ALL[code.index()], code);
    }
}

fn code_of(bytes: &[u8]) -> ErrorCode {
    decode(bytes).unwrap_err().code
}

#[test]
fn malformed_input_is_a_bad_request_with_a_reason() {
    for bad in [
        &b""[..],
        b"{",
        b"null",
        b"[]",
        b"\"join\"",
        b"{\"type\":\"dance\"}",
        b"{\"room\":\"r\",\"name\":\"n\"}",
        b"{\"type\":\"join\",\"room\":\"r\"}",
        b"{\"type\":\"join\",\"room\":7,\"name\":\"n\"}",
        b"{\"type\":\"signal\",\"to\":\"p\",\"data\":{}}",
        b"{\"type\":\"signal\",\"to\":\"p\",\"data\":{\"sdp\":{\"type\":\"offer\",\"sdp\":\"\"},\"candidate\":null}}",
        b"{\"type\":\"signal\",\"to\":\"p\",\"data\":{\"sdp\":{\"type\":\"bogus\",\"sdp\":\"\"}}}",
        b"{\"type\":\"signal\",\"to\":\"\",\"data\":{\"candidate\":null}}",
        b"{\"type\":\"state\",\"muted\":\"yes\",\"camera\":true}",
        b"\xff\xfe\x00",
    ] {
        let err = decode(bad).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest, "{:?}", String::from_utf8_lossy(bad));
        assert!(!err.message.is_empty());
    }
    let unknown = decode(b"{\"type\":\"dance\"}").unwrap_err();
    assert!(unknown.message.contains("dance"), "{}", unknown.message);
    let missing = decode(b"{\"type\":\"join\",\"room\":\"r\"}").unwrap_err();
    assert!(missing.message.contains("name"), "{}", missing.message);
}

#[test]
fn limits_are_enforced() {
    let long = |n: usize| "x".repeat(n);
    let join = |room: &str, name: &str| json!({"type":"join","room":room,"name":name}).to_string();
    assert!(decode(join(&long(limits::MAX_ROOM_NAME_CHARS), "n").as_bytes()).is_ok());
    assert_eq!(code_of(join(&long(limits::MAX_ROOM_NAME_CHARS + 1), "n").as_bytes()), ErrorCode::BadRequest);
    assert_eq!(code_of(join("r", &long(10_000)).as_bytes()), ErrorCode::BadRequest);
    assert_eq!(code_of(join("  ", "n").as_bytes()), ErrorCode::BadRequest);
    assert_eq!(code_of(join("r", "a\u{0}b").as_bytes()), ErrorCode::BadRequest);
    // Multi-byte characters count as one each.
    assert!(decode(join(&"é".repeat(limits::MAX_ROOM_NAME_CHARS), "n").as_bytes()).is_ok());
    let chat = |t: &str| json!({"type":"chat","text":t}).to_string();
    assert!(decode(chat(&long(limits::MAX_CHAT_CHARS)).as_bytes()).is_ok());
    assert_eq!(code_of(chat(&long(limits::MAX_CHAT_CHARS + 1)).as_bytes()), ErrorCode::BadRequest);
    assert_eq!(code_of(chat(" ").as_bytes()), ErrorCode::BadRequest);
    let sdp = json!({"type":"signal","to":"p","data":{"sdp":{"type":"offer","sdp":long(limits::MAX_SDP_BYTES + 1)}}})
        .to_string();
    assert_eq!(code_of(sdp.as_bytes()), ErrorCode::TooLarge);
    let frame = vec![b' '; limits::MAX_FRAME_BYTES + 1];
    assert_eq!(code_of(&frame), ErrorCode::TooLarge);
    let pw = json!({"type":"join","room":"r","name":"n","password":""}).to_string();
    assert_eq!(code_of(pw.as_bytes()), ErrorCode::BadRequest);
    let resume = |id: &str, token: &str| {
        json!({"type":"join","room":"r","name":"n","resume":{"peer_id":id,"token":token}}).to_string()
    };
    assert!(decode(resume("AbC-_9", &long(limits::MAX_TOKEN_BYTES)).as_bytes()).is_ok());
    for (id, token) in [("", "t"), ("p", ""), ("a b", "t"), ("p", "\"\n"), ("p\u{0}", "t")] {
        assert_eq!(code_of(resume(id, token).as_bytes()), ErrorCode::BadRequest, "{id:?} {token:?}");
    }
    assert_eq!(code_of(resume(&long(limits::MAX_PEER_ID_BYTES + 1), "t").as_bytes()), ErrorCode::BadRequest);
    assert_eq!(code_of(resume("p", &long(limits::MAX_TOKEN_BYTES + 1)).as_bytes()), ErrorCode::BadRequest);
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        prop_oneof![
            Just("join".to_string()),
            Just("signal".to_string()),
            Just("chat".to_string()),
            Just("state".to_string()),
            Just("leave".to_string()),
            Just("offer".to_string()),
            ".{0,12}"
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        let keys = prop_oneof![
            Just("type".to_string()),
            Just("room".to_string()),
            Just("name".to_string()),
            Just("to".to_string()),
            Just("data".to_string()),
            Just("sdp".to_string()),
            Just("candidate".to_string()),
            Just("text".to_string()),
            Just("muted".to_string()),
            Just("camera".to_string()),
            Just("password".to_string()),
            "[a-z]{1,6}"
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
        let _ = decode_server(&bytes);
    }

    /// Structured fuzzing: JSON shaped like our messages reaches deep into the decoder. Any
    /// message that decodes must survive a round trip and pass validation again.
    #[test]
    fn decode_is_total_and_stable_on_message_shaped_json(v in arb_json()) {
        let text = v.to_string();
        match decode(text.as_bytes()) {
            Ok(msg) => {
                let again = decode(encode(&msg).as_bytes());
                prop_assert_eq!(again, Ok(msg));
            }
            Err(e) => prop_assert!(!e.message.is_empty()),
        }
    }
}
