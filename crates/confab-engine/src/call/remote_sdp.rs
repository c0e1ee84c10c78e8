//! What to do when a peer's description or candidate arrives, decided as plain data before
//! anything touches a connection. First [`on_arrival`]: drop it, take back a peer we had
//! given up, rebuild our connection to match a new one of theirs, or apply it. Then, to
//! apply it, [`step`] asks the connection's `Negotiation`: answer an offer (rolling ours
//! back on glare), take an answer, add a candidate, or nothing.

use confab_proto::{IceCandidate, SdpType, SessionDescription, SignalData};

use crate::negotiation::{Negotiation, OfferAction};
use crate::peer_connection::fingerprint;

/// What we know of the sender.
#[derive(Clone, Copy, Debug)]
pub(super) enum Sender<'a> {
    /// We have a connection to it; `remote_sdp` is the description it last gave that
    /// connection, if any.
    Connected { remote_sdp: Option<&'a str> },
    /// No connection, but the server lists it in the room: we gave it up.
    InRoom,
    /// Neither.
    Unknown,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    Drop,
    /// A peer we had given up is offering again: it is back. Open a polite session to it,
    /// then apply the offer.
    Revive,
    /// The other side built a new peer connection (a new DTLS fingerprint: it gave us up,
    /// or restarted), so ours can never talk to it again: build a new one to match, polite
    /// if they offer. Their offer is then applied to the new connection; their answer was
    /// for the old one and is dropped, since our new connection offers anew.
    Rebuild {
        polite: bool,
    },
    Apply,
}

pub(super) fn on_arrival(data: &SignalData, sender: Sender) -> Arrival {
    let sdp = match data {
        SignalData::Sdp(d) => Some(d),
        SignalData::Candidate(_) => None,
    };
    match sender {
        Sender::Unknown => Arrival::Drop,
        Sender::InRoom if sdp.is_some_and(|d| d.kind == SdpType::Offer) => Arrival::Revive,
        Sender::InRoom => Arrival::Drop,
        Sender::Connected { remote_sdp } => {
            let theirs = remote_sdp.and_then(fingerprint);
            match (sdp, theirs) {
                (Some(d), Some(old)) if fingerprint(&d.sdp).is_some_and(|new| new != old) => {
                    Arrival::Rebuild { polite: d.kind == SdpType::Offer }
                }
                _ => Arrival::Apply,
            }
        }
    }
}

/// What to do to the connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    Nothing,
    /// Set their offer as the remote description (taking back our own offer first if
    /// `rollback`), add the candidates that came early, and answer.
    Answer {
        offer: SessionDescription,
        rollback: bool,
    },
    /// Set their answer to our offer, and add the candidates that came early.
    TakeAnswer(SessionDescription),
    AddCandidate(IceCandidate),
}

/// How `neg` takes `data`. After `Answer` and `TakeAnswer` have set the remote description,
/// `Negotiation::remote_set` gives the candidates to add.
pub(super) fn step(neg: &mut Negotiation, data: SignalData) -> Step {
    match data {
        SignalData::Sdp(d) => match d.kind {
            SdpType::Offer => match neg.on_offer() {
                OfferAction::Ignore => Step::Nothing,
                OfferAction::Accept { rollback } => Step::Answer { offer: d, rollback },
            },
            SdpType::Answer | SdpType::Pranswer if neg.on_answer() => Step::TakeAnswer(d),
            SdpType::Answer | SdpType::Pranswer | SdpType::Rollback => Step::Nothing,
        },
        SignalData::Candidate(Some(c)) => neg.on_candidate(c).map_or(Step::Nothing, Step::AddCandidate),
        SignalData::Candidate(None) => Step::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::negotiation::tests::cand;

    fn sdp(kind: SdpType, fp: &str) -> SignalData {
        SignalData::Sdp(SessionDescription { kind, sdp: format!("v=0\r\na=fingerprint:sha-256 {fp}\r\n") })
    }

    #[test]
    fn strangers_are_dropped_and_given_up_peers_come_back_by_offering() {
        let offer = sdp(SdpType::Offer, "AA");
        assert_eq!(on_arrival(&offer, Sender::Unknown), Arrival::Drop);
        assert_eq!(on_arrival(&offer, Sender::InRoom), Arrival::Revive);
        assert_eq!(on_arrival(&sdp(SdpType::Answer, "AA"), Sender::InRoom), Arrival::Drop);
        assert_eq!(on_arrival(&SignalData::Candidate(Some(cand(1))), Sender::InRoom), Arrival::Drop);
    }

    #[test]
    fn a_new_fingerprint_means_a_new_connection_on_their_side() {
        let ours = "v=0\r\na=fingerprint:sha-256 AA\r\n";
        let connected = Sender::Connected { remote_sdp: Some(ours) };
        assert_eq!(on_arrival(&sdp(SdpType::Offer, "AA"), connected), Arrival::Apply, "an ICE restart keeps it");
        assert_eq!(on_arrival(&sdp(SdpType::Offer, "BB"), connected), Arrival::Rebuild { polite: true });
        assert_eq!(on_arrival(&sdp(SdpType::Answer, "BB"), connected), Arrival::Rebuild { polite: false });
        assert_eq!(
            on_arrival(&sdp(SdpType::Offer, "BB"), Sender::Connected { remote_sdp: None }),
            Arrival::Apply,
            "nothing to compare with before the first description"
        );
        assert_eq!(on_arrival(&SignalData::Candidate(None), connected), Arrival::Apply);
    }

    #[test]
    fn the_answerer_answers_and_adds_the_candidates_that_came_early() {
        let mut neg = Negotiation::new(true);
        assert_eq!(step(&mut neg, SignalData::Candidate(Some(cand(1)))), Step::Nothing, "queued");
        let SignalData::Sdp(offer) = sdp(SdpType::Offer, "AA") else { unreachable!() };
        assert_eq!(step(&mut neg, SignalData::Sdp(offer.clone())), Step::Answer { offer, rollback: false });
        assert_eq!(neg.remote_set(), vec![cand(1)]);
        assert_eq!(step(&mut neg, SignalData::Candidate(Some(cand(2)))), Step::AddCandidate(cand(2)));
        assert_eq!(step(&mut neg, SignalData::Candidate(None)), Step::Nothing);
    }

    #[test]
    fn glare_the_polite_side_rolls_back_the_impolite_side_ignores() {
        let (mut polite, mut impolite) = (Negotiation::new(true), Negotiation::new(false));
        polite.offer_sent();
        impolite.offer_sent();
        let SignalData::Sdp(offer) = sdp(SdpType::Offer, "AA") else { unreachable!() };
        assert_eq!(step(&mut impolite, SignalData::Sdp(offer.clone())), Step::Nothing);
        assert_eq!(
            step(&mut impolite, SignalData::Candidate(Some(cand(1)))),
            Step::Nothing,
            "goes with the ignored offer"
        );
        assert_eq!(step(&mut polite, SignalData::Sdp(offer.clone())), Step::Answer { offer, rollback: true });
        let SignalData::Sdp(answer) = sdp(SdpType::Answer, "BB") else { unreachable!() };
        assert_eq!(step(&mut impolite, SignalData::Sdp(answer.clone())), Step::TakeAnswer(answer));
    }

    #[test]
    fn an_answer_to_no_offer_of_ours_is_dropped() {
        let mut neg = Negotiation::new(false);
        let SignalData::Sdp(answer) = sdp(SdpType::Answer, "AA") else { unreachable!() };
        assert_eq!(step(&mut neg, SignalData::Sdp(answer.clone())), Step::Nothing);
        neg.offer_sent();
        assert_eq!(step(&mut neg, SignalData::Sdp(answer.clone())), Step::TakeAnswer(answer.clone()));
        assert_eq!(step(&mut neg, SignalData::Sdp(answer)), Step::Nothing, "a second answer is stale");
        assert_eq!(step(&mut neg, sdp(SdpType::Rollback, "AA")), Step::Nothing);
    }

    #[test]
    fn after_a_rebuild_the_offer_is_answered_on_the_new_connection() {
        // The peer gave us up and came back with a new connection and a new offer.
        let ours = "v=0\r\na=fingerprint:sha-256 AA\r\n";
        let data = sdp(SdpType::Offer, "BB");
        let Arrival::Rebuild { polite } = on_arrival(&data, Sender::Connected { remote_sdp: Some(ours) }) else {
            panic!("expected a rebuild")
        };
        let mut fresh = Negotiation::new(polite);
        assert!(matches!(step(&mut fresh, data), Step::Answer { rollback: false, .. }));
    }
}
