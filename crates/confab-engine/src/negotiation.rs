//! Per-peer negotiation bookkeeping ("perfect negotiation", RFC 9429 style), as plain data:
//! who is polite, whether an offer of ours is outstanding, whether a remote description is
//! set, and the ICE candidates that arrived too early. The call applies what it decides.
//!
//! confab's rule is that peers already in a room offer to a newcomer, so the newcomer is the
//! polite one: on glare it rolls its own offer back and takes the other's.

use confab_proto::IceCandidate;

#[derive(Debug)]
pub struct Negotiation {
    /// The polite peer yields on glare.
    pub polite: bool,
    /// We sent an offer and have not had its answer.
    have_local_offer: bool,
    /// A remote description is set, so candidates can be added.
    have_remote: bool,
    /// We are ignoring the remote's offer (impolite side of a glare), and the candidates
    /// that go with it.
    ignoring_offer: bool,
    /// Candidates that came before the remote description.
    queued: Vec<IceCandidate>,
}

/// What to do with a remote offer.
#[derive(Debug, PartialEq, Eq)]
pub enum OfferAction {
    /// Glare and we are impolite: drop it; our offer stands.
    Ignore,
    /// Apply it (rolling back our own outstanding offer first if `rollback`), then answer.
    Accept { rollback: bool },
}

impl Negotiation {
    pub fn new(polite: bool) -> Self {
        Negotiation { polite, have_local_offer: false, have_remote: false, ignoring_offer: false, queued: Vec::new() }
    }

    /// We are about to send an offer (first offer, or an ICE restart).
    pub fn offer_sent(&mut self) {
        self.have_local_offer = true;
    }

    pub fn on_offer(&mut self) -> OfferAction {
        let collision = self.have_local_offer;
        self.ignoring_offer = collision && !self.polite;
        if self.ignoring_offer {
            return OfferAction::Ignore;
        }
        self.have_local_offer = false;
        OfferAction::Accept { rollback: collision }
    }

    /// An answer came. `true` if it answers an offer of ours and should be applied.
    pub fn on_answer(&mut self) -> bool {
        let expected = self.have_local_offer;
        self.have_local_offer = false;
        if expected {
            self.ignoring_offer = false;
        }
        expected
    }

    /// The remote description was applied: returns the queued candidates to add now.
    pub fn remote_set(&mut self) -> Vec<IceCandidate> {
        self.have_remote = true;
        std::mem::take(&mut self.queued)
    }

    /// A candidate came: `Some` to add it now, `None` if it was queued or belongs to an offer
    /// we ignore.
    pub fn on_candidate(&mut self, c: IceCandidate) -> Option<IceCandidate> {
        if self.ignoring_offer {
            return None;
        }
        if !self.have_remote {
            // Bound the queue: a peer cannot make us hold unlimited candidates.
            if self.queued.len() < 256 {
                self.queued.push(c);
            }
            return None;
        }
        Some(c)
    }

    pub fn has_remote(&self) -> bool {
        self.have_remote
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A made-up candidate, numbered.
    pub(crate) fn cand(n: u8) -> IceCandidate {
        IceCandidate {
            candidate: format!("candidate:{n}"),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
            username_fragment: None,
        }
    }

    #[test]
    fn offerer_flow_queues_early_candidates() {
        let mut n = Negotiation::new(false);
        n.offer_sent();
        assert_eq!(n.on_candidate(cand(1)), None, "no remote description yet");
        assert!(n.on_answer());
        assert_eq!(n.remote_set(), vec![cand(1)]);
        assert_eq!(n.on_candidate(cand(2)), Some(cand(2)));
        assert!(!n.on_answer(), "a second answer is stale");
    }

    #[test]
    fn answerer_flow() {
        let mut n = Negotiation::new(true);
        assert_eq!(n.on_candidate(cand(1)), None);
        assert_eq!(n.on_offer(), OfferAction::Accept { rollback: false });
        assert_eq!(n.remote_set(), vec![cand(1)]);
    }

    #[test]
    fn glare_polite_rolls_back_impolite_ignores() {
        let mut polite = Negotiation::new(true);
        let mut impolite = Negotiation::new(false);
        polite.offer_sent();
        impolite.offer_sent();
        // Both offers cross.
        assert_eq!(impolite.on_offer(), OfferAction::Ignore);
        assert_eq!(impolite.on_candidate(cand(9)), None, "candidates of the ignored offer are dropped");
        assert_eq!(polite.on_offer(), OfferAction::Accept { rollback: true });
        // The polite side answers the impolite offer; the impolite side applies it.
        assert!(impolite.on_answer());
        assert_eq!(impolite.remote_set(), vec![]);
        assert_eq!(impolite.on_candidate(cand(3)), Some(cand(3)));
    }
}
